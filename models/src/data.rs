//! In-memory classification datasets and their loaders (CSV, IDX/MNIST, Fashion-MNIST).
//!
//! A [`Dataset`] is one row-major feature buffer plus a label per row; training copies
//! each batch's rows straight out of that buffer, so nothing here allocates per sample.
//! Features are `f32`, or pixels kept as bytes (a quarter of the memory) and read as
//! `byte / 255` when a batch is made.

use std::borrow::Cow;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Where the Debian package `dataset-fashion-mnist` installs the Fashion-MNIST IDX files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Largest decompressed IDX file accepted (1 GiB; Fashion-MNIST's largest is 47 MB).
pub const MAX_IDX_BYTES: usize = 1 << 30;

/// Magic number of an IDX file of unsigned bytes with three dimensions (images).
const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// Magic number of an IDX file of unsigned bytes with one dimension (labels).
const IDX_LABELS_MAGIC: u32 = 0x0000_0801;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Why a dataset could not be loaded or built.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file could not be opened or read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// File that failed.
        path: PathBuf,
        /// The underlying failure.
        error: std::io::Error,
    },
    /// Reading from a stream failed mid-way.
    #[error("read failed: {0}")]
    Read(std::io::Error),
    /// A file's contents are malformed; `error` says where and how.
    #[error("{}: {error}", path.display())]
    InFile {
        /// File that holds the bad contents.
        path: PathBuf,
        /// What is wrong with them.
        error: Box<DataError>,
    },
    /// The CSV has no header row.
    #[error("the CSV is empty: expected a header row, then one row per sample")]
    MissingHeader,
    /// The CSV header has too few columns to hold features and a label.
    #[error("the CSV header has {0} column(s); expected at least one feature column and a label column")]
    TooFewColumns(usize),
    /// The file holds a header but no samples.
    #[error("no samples: the file holds no data rows")]
    NoRows,
    /// A CSV row has the wrong number of fields.
    #[error("line {line}: expected {expected} comma-separated fields (as in the header), got {got}")]
    ColumnCount {
        /// 1-based line number.
        line: usize,
        /// Fields in the header.
        expected: usize,
        /// Fields on this line.
        got: usize,
    },
    /// A feature is not a finite number.
    #[error(
        "line {line}, column `{column}`: `{value}` is not a finite number \
         (or overflows when scaled)"
    )]
    BadNumber {
        /// 1-based line number.
        line: usize,
        /// Header name of the column.
        column: String,
        /// The offending text.
        value: String,
    },
    /// A label is not a non-negative integer.
    #[error("line {line}: label `{value}` is not a non-negative integer")]
    BadLabel {
        /// 1-based line number.
        line: usize,
        /// The offending text.
        value: String,
    },
    /// The CSV scale factor is unusable.
    #[error("the feature scale must be finite and non-zero, got {0}")]
    BadScale(f32),
    /// An IDX file does not start with the expected magic number.
    #[error("IDX {what}: magic number {got:#010x}, expected {expected:#010x}")]
    IdxMagic {
        /// Which file (`images` or `labels`).
        what: &'static str,
        /// Magic number required.
        expected: u32,
        /// Magic number found.
        got: u32,
    },
    /// An IDX file is shorter than its header announces.
    #[error("IDX {what}: truncated: the header announces {expected} bytes, the file holds {got}")]
    IdxTruncated {
        /// Which file (`images` or `labels`).
        what: &'static str,
        /// Bytes the header implies (u128: a hostile header can announce more than 2^64).
        expected: u128,
        /// Bytes present.
        got: u128,
    },
    /// An IDX file has bytes after its announced contents.
    #[error("IDX {what}: {extra} trailing bytes after the announced contents")]
    IdxTrailing {
        /// Which file (`images` or `labels`).
        what: &'static str,
        /// Bytes past the end.
        extra: u128,
    },
    /// An IDX image file announces zero-sized images.
    #[error("IDX images: degenerate image size {rows}x{cols}")]
    IdxImageSize {
        /// Rows per image.
        rows: u32,
        /// Columns per image.
        cols: u32,
    },
    /// The image and label files hold different numbers of samples.
    #[error("IDX: {images} images but {labels} labels")]
    IdxCountMismatch {
        /// Images announced.
        images: u64,
        /// Labels announced.
        labels: u64,
    },
    /// A file decompresses to more than the limit.
    #[error("decompresses to more than {limit} bytes")]
    TooLarge {
        /// Limit in force.
        limit: usize,
    },
    /// WordNet's `data.noun` is missing.
    #[error(
        "WordNet is not installed ({} is missing): install Debian's WordNet 3.0 database with \
         `apt-get install wordnet-base`",
        path.display()
    )]
    WordnetMissing {
        /// Where `data.noun` was looked for.
        path: PathBuf,
    },
    /// The WordNet task's settings are unusable.
    #[error("WordNet task: {0}")]
    Wordnet(String),
    /// A Fashion-MNIST file is missing.
    #[error(
        "Fashion-MNIST file {} not found; install the dataset with \
         `apt-get install dataset-fashion-mnist` (it goes to {FASHION_MNIST_DIR}) \
         or point to a directory that holds the four IDX files",
        path.display()
    )]
    FashionMnistMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// Feature buffer, labels and dimension disagree.
    #[error("{features} feature values do not make {labels} rows of {dim} features")]
    Shape {
        /// Length of the feature buffer.
        features: usize,
        /// Number of labels.
        labels: usize,
        /// Features per row.
        dim: usize,
    },
    /// The feature dimension or the class count is zero.
    #[error("a dataset needs at least one feature and one class (got dim {dim}, classes {classes})")]
    Degenerate {
        /// Features per row.
        dim: usize,
        /// Number of classes.
        classes: usize,
    },
    /// A label is not below the class count.
    #[error("row {row} has label {label}, but the dataset has only {classes} classes")]
    LabelOutOfRange {
        /// Row index.
        row: usize,
        /// The label.
        label: u32,
        /// Number of classes.
        classes: usize,
    },
    /// A row index is past the end of the dataset.
    #[error("row index {index} is out of range for a dataset of {len} rows")]
    IndexOutOfRange {
        /// The index.
        index: usize,
        /// Rows in the dataset.
        len: usize,
    },
}

impl DataError {
    fn in_file(self, path: &Path) -> Self {
        match self {
            e @ (DataError::Io { .. } | DataError::InFile { .. }) => e,
            e => DataError::InFile {
                path: path.to_path_buf(),
                error: Box::new(e),
            },
        }
    }
}

/// A labelled classification dataset held in memory.
#[derive(Clone, PartialEq)]
pub struct Dataset {
    /// Row-major, `len() × dim` values.
    features: Values,
    /// One label per row, each `< classes`.
    labels: Vec<u32>,
    dim: usize,
    classes: usize,
}

/// A dataset's feature values as stored.
#[derive(Clone, PartialEq)]
enum Values {
    /// Each value as it is.
    Floats(Vec<f32>),
    /// Pixels: each byte is the value `byte / 255`.
    Pixels(Vec<u8>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Self::Floats(v) => v.len(),
            Self::Pixels(v) => v.len(),
        }
    }
}

/// The value a pixel byte stands for (the same expression wherever pixels become `f32`).
fn pixel(byte: u8) -> f32 {
    f32::from(byte) / 255.0
}

impl fmt::Debug for Dataset {
    // The feature buffer can be tens of megabytes: summarise it instead of printing it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dataset")
            .field("len", &self.len())
            .field("dim", &self.dim)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl Dataset {
    /// Builds a dataset from a row-major feature buffer and one label per row.
    ///
    /// # Errors
    /// [`DataError::Degenerate`] when `dim` or `classes` is zero, [`DataError::Shape`] when
    /// `features.len() != labels.len() * dim`, [`DataError::LabelOutOfRange`] when a label
    /// is not below `classes`.
    pub fn from_parts(features: Vec<f32>, labels: Vec<u32>, dim: usize, classes: usize) -> Result<Self, DataError> {
        Self::checked(Values::Floats(features), labels, dim, classes)
    }

    /// Builds a dataset of pixels kept as bytes, each read as `byte / 255` (see
    /// [`Dataset::extend_rows`]), from a row-major buffer and one label per row.
    ///
    /// # Errors
    /// As [`Dataset::from_parts`].
    pub fn from_pixels(pixels: Vec<u8>, labels: Vec<u32>, dim: usize, classes: usize) -> Result<Self, DataError> {
        Self::checked(Values::Pixels(pixels), labels, dim, classes)
    }

    fn checked(features: Values, labels: Vec<u32>, dim: usize, classes: usize) -> Result<Self, DataError> {
        if dim == 0 || classes == 0 {
            return Err(DataError::Degenerate { dim, classes });
        }
        if labels.len().checked_mul(dim) != Some(features.len()) {
            return Err(DataError::Shape {
                features: features.len(),
                labels: labels.len(),
                dim,
            });
        }
        if let Some((row, &label)) = labels.iter().enumerate().find(|(_, l)| **l as usize >= classes) {
            return Err(DataError::LabelOutOfRange { row, label, classes });
        }
        Ok(Self {
            features,
            labels,
            dim,
            classes,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the dataset has no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Features per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of classes; every label is below it.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Every feature value, row-major (`len() × dim()` values): borrowed for `f32`
    /// features, converted for pixels. Batches use [`Dataset::extend_rows`], which
    /// converts only the rows they take.
    pub fn features(&self) -> Cow<'_, [f32]> {
        match &self.features {
            Values::Floats(v) => Cow::Borrowed(v),
            Values::Pixels(v) => Cow::Owned(v.iter().map(|&p| pixel(p)).collect()),
        }
    }

    /// Appends the features of rows `rows` (row-major) to `out`.
    ///
    /// # Panics
    /// When `rows` goes past [`Dataset::len`].
    pub fn extend_rows(&self, rows: Range<usize>, out: &mut Vec<f32>) {
        let values = rows.start * self.dim..rows.end * self.dim;
        match &self.features {
            Values::Floats(v) => out.extend_from_slice(&v[values]),
            Values::Pixels(v) => out.extend(v[values].iter().map(|&p| pixel(p))),
        }
    }

    /// Whether features are pixels kept as bytes.
    pub fn holds_pixels(&self) -> bool {
        matches!(self.features, Values::Pixels(_))
    }

    /// One label per row.
    pub fn labels(&self) -> &[u32] {
        &self.labels
    }

    /// Number of rows of each class, indexed by label.
    pub fn label_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes];
        for &label in &self.labels {
            counts[label as usize] += 1;
        }
        counts
    }

    /// The same data declared with `classes` classes, e.g. so that a file whose rows happen
    /// to lack the last class matches a model with the full set.
    ///
    /// # Errors
    /// [`DataError::Degenerate`] when `classes` is zero, [`DataError::LabelOutOfRange`] when a
    /// label is not below `classes`.
    pub fn with_classes(self, classes: usize) -> Result<Self, DataError> {
        Self::checked(self.features, self.labels, self.dim, classes)
    }

    /// The rows at `indices`, in that order (repeats allowed), with the same dimension and
    /// class count.
    ///
    /// # Errors
    /// [`DataError::IndexOutOfRange`] for an index past the end.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset, DataError> {
        let len = self.len();
        if let Some(&index) = indices.iter().find(|&&i| i >= len) {
            return Err(DataError::IndexOutOfRange { index, len });
        }
        let rows = |i: usize| i * self.dim..(i + 1) * self.dim;
        let features = match &self.features {
            Values::Floats(v) => Values::Floats(indices.iter().flat_map(|&i| &v[rows(i)]).copied().collect()),
            Values::Pixels(v) => Values::Pixels(indices.iter().flat_map(|&i| &v[rows(i)]).copied().collect()),
        };
        let labels = indices.iter().map(|&i| self.labels[i]).collect();
        Ok(Self {
            features,
            labels,
            dim: self.dim,
            classes: self.classes,
        })
    }
}

/// Loads a CSV file: a header row, numeric feature columns, then an integer label in the
/// last column. Features are multiplied by `scale` (digits: `1.0 / 16.0`); the class count
/// is the largest label plus one.
///
/// # Errors
/// [`DataError::Io`] when the file cannot be read; otherwise the errors of [`parse_csv`],
/// wrapped in [`DataError::InFile`] naming the file.
pub fn load_csv(path: impl AsRef<Path>, scale: f32) -> Result<Dataset, DataError> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|error| DataError::Io {
        path: path.to_path_buf(),
        error,
    })?;
    parse_csv(BufReader::new(file), scale).map_err(|e| e.in_file(path))
}

/// Parses CSV text as [`load_csv`] describes. Blank lines are skipped; fields may be
/// padded with spaces.
///
/// # Errors
/// [`DataError::MissingHeader`], [`DataError::TooFewColumns`], [`DataError::NoRows`],
/// [`DataError::ColumnCount`], [`DataError::BadNumber`] or [`DataError::BadLabel`] (the
/// last three with the 1-based line number), [`DataError::BadScale`], and
/// [`DataError::Read`] when the reader fails.
pub fn parse_csv(reader: impl BufRead, scale: f32) -> Result<Dataset, DataError> {
    if !scale.is_finite() || scale == 0.0 {
        return Err(DataError::BadScale(scale));
    }
    let mut lines = reader.lines();
    let header = match lines.next() {
        Some(line) => line.map_err(DataError::Read)?,
        None => return Err(DataError::MissingHeader),
    };
    let columns: Vec<String> = header.split(',').map(|c| c.trim().to_owned()).collect();
    if columns.len() < 2 {
        return Err(DataError::TooFewColumns(columns.len()));
    }
    let dim = columns.len() - 1;

    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (i, line) in lines.enumerate() {
        let line_no = i + 2;
        let line = line.map_err(DataError::Read)?;
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != columns.len() {
            return Err(DataError::ColumnCount {
                line: line_no,
                expected: columns.len(),
                got: fields.len(),
            });
        }
        for (field, column) in fields[..dim].iter().zip(&columns) {
            match field.parse::<f32>().map(|v| v * scale) {
                Ok(v) if v.is_finite() => features.push(v),
                _ => {
                    return Err(DataError::BadNumber {
                        line: line_no,
                        column: column.clone(),
                        value: (*field).to_owned(),
                    });
                }
            }
        }
        let label = fields[dim];
        labels.push(label.parse::<u32>().map_err(|_| DataError::BadLabel {
            line: line_no,
            value: label.to_owned(),
        })?);
    }
    let Some(&max_label) = labels.iter().max() else {
        return Err(DataError::NoRows);
    };
    Dataset::from_parts(features, labels, dim, max_label as usize + 1)
}

/// Loads an IDX image file and its IDX label file (the MNIST format), each raw or
/// gzip-compressed (detected by the gzip magic). Pixels are scaled to `[0, 1]`; the class
/// count is the largest label plus one.
///
/// # Errors
/// [`DataError::Io`] when a file cannot be read, [`DataError::TooLarge`] when one
/// decompresses to more than [`MAX_IDX_BYTES`], and the errors of [`parse_idx`].
pub fn load_idx(images: impl AsRef<Path>, labels: impl AsRef<Path>) -> Result<Dataset, DataError> {
    let (images, labels) = (images.as_ref(), labels.as_ref());
    let image_bytes = read_maybe_gzip(images)?;
    let label_bytes = read_maybe_gzip(labels)?;
    parse_idx(&image_bytes, &label_bytes).map_err(|e| match e {
        DataError::IdxMagic { what: "labels", .. }
        | DataError::IdxTruncated { what: "labels", .. }
        | DataError::IdxTrailing { what: "labels", .. } => e.in_file(labels),
        DataError::IdxCountMismatch { .. } => e,
        e => e.in_file(images),
    })
}

/// Parses in-memory IDX buffers (uncompressed): `images` with magic `0x00000803` and
/// dimensions `[n, rows, cols]`, `labels` with magic `0x00000801` and dimension `[n]`.
///
/// Sizes announced by the headers are checked against the buffers before anything is
/// allocated, so a header announcing 2^32 images is an error, not an allocation.
///
/// # Errors
/// [`DataError::IdxMagic`], [`DataError::IdxTruncated`], [`DataError::IdxTrailing`],
/// [`DataError::IdxImageSize`], [`DataError::IdxCountMismatch`], and [`DataError::NoRows`]
/// for zero samples.
pub fn parse_idx(images_bytes: &[u8], labels_bytes: &[u8]) -> Result<Dataset, DataError> {
    let image_header = idx_header::<3>(images_bytes, "images", IDX_IMAGES_MAGIC)?;
    let (n_images, rows, cols) = (image_header[0], image_header[1], image_header[2]);
    if rows == 0 || cols == 0 {
        return Err(DataError::IdxImageSize { rows, cols });
    }
    let dim = u64::from(rows) * u64::from(cols);
    idx_body_len(images_bytes, "images", 16, u128::from(n_images) * u128::from(dim))?;

    let label_header = idx_header::<1>(labels_bytes, "labels", IDX_LABELS_MAGIC)?;
    let n_labels = label_header[0];
    idx_body_len(labels_bytes, "labels", 8, u128::from(n_labels))?;

    if n_images != n_labels {
        return Err(DataError::IdxCountMismatch {
            images: n_images.into(),
            labels: n_labels.into(),
        });
    }
    let labels: Vec<u32> = labels_bytes[8..].iter().map(|&l| u32::from(l)).collect();
    let Some(&max_label) = labels.iter().max() else {
        return Err(DataError::NoRows);
    };
    // `dim` fits in usize: the body holding at least one image of `dim` bytes is in memory.
    Dataset::from_pixels(
        images_bytes[16..].to_vec(),
        labels,
        dim as usize,
        max_label as usize + 1,
    )
}

/// Reads an IDX label file (raw or gzip): one label per row.
///
/// # Errors
/// [`DataError::Io`], [`DataError::TooLarge`], [`DataError::IdxMagic`],
/// [`DataError::IdxTruncated`], [`DataError::IdxTrailing`], each naming the file.
pub fn load_idx_labels(path: impl AsRef<Path>) -> Result<Vec<u32>, DataError> {
    let path = path.as_ref();
    let bytes = read_maybe_gzip(path)?;
    let header = idx_header::<1>(&bytes, "labels", IDX_LABELS_MAGIC).map_err(|e| e.in_file(path))?;
    idx_body_len(&bytes, "labels", 8, u128::from(header[0])).map_err(|e| e.in_file(path))?;
    Ok(bytes[8..].iter().map(|&l| u32::from(l)).collect())
}

/// Reads only the rows `rows` (in that order, repeats allowed) of an IDX image file (raw
/// or gzip), decoding it as a stream: memory holds the chosen rows and one image, never
/// the whole file. `labels` are the file's labels (see [`load_idx_labels`]), `classes`
/// the class count of the result. Pixels stay bytes (see [`Dataset::from_pixels`]).
///
/// # Errors
/// [`DataError::Io`] and [`DataError::Read`] when the file cannot be read,
/// [`DataError::IdxMagic`], [`DataError::IdxTruncated`], [`DataError::IdxTrailing`],
/// [`DataError::IdxImageSize`], [`DataError::IdxCountMismatch`] against `labels`,
/// [`DataError::IndexOutOfRange`] for a row past the end.
pub fn load_idx_rows(
    images: impl AsRef<Path>,
    labels: &[u32],
    rows: &[usize],
    classes: usize,
) -> Result<Dataset, DataError> {
    let path = images.as_ref();
    let io_error = |error| DataError::Io {
        path: path.to_path_buf(),
        error,
    };
    let mut file = std::io::BufReader::new(std::fs::File::open(path).map_err(io_error)?);
    let gzip = std::io::BufRead::fill_buf(&mut file)
        .map_err(io_error)?
        .starts_with(&GZIP_MAGIC);
    let mut reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let in_file = |e: DataError| e.in_file(path);
    let mut header = [0u8; 16];
    read_exact_or_truncated(&mut reader, &mut header, 16, 0).map_err(in_file)?;
    let [n, height, width] = idx_header::<3>(&header, "images", IDX_IMAGES_MAGIC).map_err(in_file)?;
    if height == 0 || width == 0 {
        return Err(in_file(DataError::IdxImageSize {
            rows: height,
            cols: width,
        }));
    }
    if n as usize != labels.len() {
        return Err(DataError::IdxCountMismatch {
            images: n.into(),
            labels: labels.len() as u64,
        });
    }
    let dim = height as usize * width as usize;
    if let Some(&index) = rows.iter().find(|&&r| r >= labels.len()) {
        return Err(DataError::IndexOutOfRange {
            index,
            len: labels.len(),
        });
    }
    // Where each wanted image goes, in file order.
    let mut wanted: Vec<(usize, usize)> = rows.iter().enumerate().map(|(at, &row)| (row, at)).collect();
    wanted.sort_unstable();
    let mut features = vec![0u8; rows.len() * dim];
    let mut image = vec![0u8; dim];
    let mut next = wanted.iter().peekable();
    let last = wanted.last().map_or(0, |&(row, _)| row + 1);
    for i in 0..last {
        read_exact_or_truncated(
            &mut reader,
            &mut image,
            16 + (i as u128 + 1) * dim as u128,
            16 + i as u128 * dim as u128,
        )
        .map_err(in_file)?;
        while let Some(&&(row, at)) = next.peek()
            && row == i
        {
            features[at * dim..(at + 1) * dim].copy_from_slice(&image);
            next.next();
        }
    }
    let labels = rows.iter().map(|&r| labels[r]).collect();
    Dataset::from_pixels(features, labels, dim, classes)
}

/// Fills `buf` from `reader`; a short read is [`DataError::IdxTruncated`] (`expected`
/// bytes in all, `done` before this read).
fn read_exact_or_truncated(reader: &mut dyn Read, buf: &mut [u8], expected: u128, done: u128) -> Result<(), DataError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => {
                return Err(DataError::IdxTruncated {
                    what: "images",
                    expected,
                    got: done + filled as u128,
                });
            }
            Ok(k) => filled += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(DataError::Read(e)),
        }
    }
    Ok(())
}

/// The rows `rows` of Fashion-MNIST's training or test split in `dir`, read as a stream
/// (see [`load_idx_rows`]): an agent holding a tenth of the 60,000 images decodes only
/// those.
///
/// # Errors
/// As [`load_fashion_mnist`] and [`load_idx_rows`].
pub fn load_fashion_mnist_rows(dir: impl AsRef<Path>, train: bool, rows: &[usize]) -> Result<Dataset, DataError> {
    let (images, labels) = fashion_mnist_files(dir.as_ref(), train)?;
    load_idx_rows(&images, &load_idx_labels(&labels)?, rows, 10)
}

/// Fashion-MNIST's labels (training or test split) in `dir`.
///
/// # Errors
/// As [`load_fashion_mnist`].
pub fn load_fashion_mnist_labels(dir: impl AsRef<Path>, train: bool) -> Result<Vec<u32>, DataError> {
    let (_, labels) = fashion_mnist_files(dir.as_ref(), train)?;
    load_idx_labels(&labels)
}

/// The image and label files of a Fashion-MNIST split, checked to exist.
fn fashion_mnist_files(dir: &Path, train: bool) -> Result<(PathBuf, PathBuf), DataError> {
    let prefix = if train { "train" } else { "t10k" };
    let images = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let labels = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    for path in [&images, &labels] {
        if !path.exists() {
            return Err(DataError::FashionMnistMissing { path: path.clone() });
        }
    }
    Ok((images, labels))
}

/// Reads the magic number and `N` big-endian dimensions of an IDX header.
fn idx_header<const N: usize>(bytes: &[u8], what: &'static str, magic: u32) -> Result<[u32; N], DataError> {
    let header_len = 4 + 4 * N;
    let word = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    if bytes.len() < 4 {
        return Err(DataError::IdxTruncated {
            what,
            expected: header_len as u128,
            got: bytes.len() as u128,
        });
    }
    let got = word(0);
    if got != magic {
        return Err(DataError::IdxMagic {
            what,
            expected: magic,
            got,
        });
    }
    if bytes.len() < header_len {
        return Err(DataError::IdxTruncated {
            what,
            expected: header_len as u128,
            got: bytes.len() as u128,
        });
    }
    Ok(std::array::from_fn(|i| word(4 + 4 * i)))
}

/// Checks that `bytes` holds exactly `header_len + body_len` bytes.
fn idx_body_len(bytes: &[u8], what: &'static str, header_len: u128, body_len: u128) -> Result<(), DataError> {
    let expected = header_len + body_len;
    let got = bytes.len() as u128;
    if got < expected {
        return Err(DataError::IdxTruncated { what, expected, got });
    }
    if got > expected {
        return Err(DataError::IdxTrailing {
            what,
            extra: got - expected,
        });
    }
    Ok(())
}

/// Reads a whole file, gunzipping it when it starts with the gzip magic.
fn read_maybe_gzip(path: &Path) -> Result<Vec<u8>, DataError> {
    let io_error = |error| DataError::Io {
        path: path.to_path_buf(),
        error,
    };
    let raw = std::fs::read(path).map_err(io_error)?;
    if !raw.starts_with(&GZIP_MAGIC) {
        return Ok(raw);
    }
    gunzip(&raw, MAX_IDX_BYTES).map_err(|e| match e {
        DataError::Read(error) => io_error(error),
        e => e.in_file(path),
    })
}

/// Decompresses a (possibly multi-member) gzip buffer of at most `limit` bytes.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(DataError::Read)?;
    if out.len() > limit {
        return Err(DataError::TooLarge { limit });
    }
    Ok(out)
}

/// Loads the Fashion-MNIST training (60,000 rows) or test (10,000 rows) split from `dir`
/// (normally [`FASHION_MNIST_DIR`]): 784 features in `[0, 1]`, ten classes.
///
/// # Errors
/// [`DataError::FashionMnistMissing`] when a file is absent (the message says how to
/// install it), otherwise those of [`load_idx`].
pub fn load_fashion_mnist(dir: impl AsRef<Path>, train: bool) -> Result<Dataset, DataError> {
    let (images, labels) = fashion_mnist_files(dir.as_ref(), train)?;
    load_idx(&images, &labels)?.with_classes(10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn csv(text: &str) -> Result<Dataset, DataError> {
        parse_csv(text.as_bytes(), 0.5)
    }

    #[test]
    fn csv_parses_features_labels_and_scale() {
        let data = csv("a,b,label\n1,2,0\n\n 3 , 4 ,2\r\n").unwrap();
        assert_eq!(data.len(), 2);
        assert_eq!(data.dim(), 2);
        assert_eq!(data.classes(), 3);
        assert_eq!(*data.features(), [0.5, 1.0, 1.5, 2.0]);
        assert_eq!(data.labels(), &[0, 2]);
        assert_eq!(data.label_counts(), vec![1, 0, 1]);
    }

    #[test]
    fn csv_bad_rows_name_their_line() {
        let err = csv("a,b,label\n1,2,0\n1,2\n").unwrap_err();
        assert!(
            matches!(
                err,
                DataError::ColumnCount {
                    line: 3,
                    expected: 3,
                    got: 2
                }
            ),
            "{err}"
        );
        let err = csv("a,b,label\n1,x,0\n").unwrap_err();
        let DataError::BadNumber { line: 2, column, value } = &err else {
            panic!("{err}")
        };
        assert_eq!((column.as_str(), value.as_str()), ("b", "x"));
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = csv("a,b,label\n1,NaN,0\n").unwrap_err();
        assert!(matches!(err, DataError::BadNumber { line: 2, .. }));
        let err = parse_csv("a,label\n3e38,0\n".as_bytes(), 16.0).unwrap_err();
        assert!(
            matches!(err, DataError::BadNumber { line: 2, .. }),
            "scaled to infinity"
        );
        let err = csv("a,b,label\n1,2,0\n1,2,-1\n").unwrap_err();
        assert!(matches!(err, DataError::BadLabel { line: 3, .. }));
        let err = csv("a,b,label\n1,2,1.5\n").unwrap_err();
        assert!(matches!(err, DataError::BadLabel { line: 2, .. }));
        assert!(matches!(csv(""), Err(DataError::MissingHeader)));
        assert!(matches!(csv("label\n1\n"), Err(DataError::TooFewColumns(1))));
        assert!(matches!(csv("a,label\n"), Err(DataError::NoRows)));
        assert!(matches!(
            parse_csv("a,l\n1,0\n".as_bytes(), f32::NAN),
            Err(DataError::BadScale(_))
        ));
    }

    #[test]
    fn load_csv_names_the_file() {
        let err = load_csv("/nonexistent/x.csv", 1.0).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/x.csv"), "{err}");
    }

    #[test]
    fn digits_csv_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../data/digits.csv");
        let data = load_csv(path, 1.0 / 16.0).unwrap();
        assert_eq!((data.len(), data.dim(), data.classes()), (1797, 64, 10));
        assert!(data.features().iter().all(|v| (0.0..=1.0).contains(v)));
    }

    #[test]
    fn from_parts_and_subset_validate() {
        assert!(matches!(
            Dataset::from_parts(vec![0.0; 3], vec![0, 1], 2, 2),
            Err(DataError::Shape { .. })
        ));
        assert!(matches!(
            Dataset::from_parts(vec![0.0; 4], vec![0, 2], 2, 2),
            Err(DataError::LabelOutOfRange {
                row: 1,
                label: 2,
                classes: 2
            })
        ));
        assert!(matches!(
            Dataset::from_parts(vec![], vec![], 0, 2),
            Err(DataError::Degenerate { .. })
        ));
        let data = Dataset::from_parts(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![0, 1, 0], 2, 2).unwrap();
        let sub = data.subset(&[2, 0]).unwrap();
        assert_eq!(*sub.features(), [5.0, 6.0, 1.0, 2.0]);
        assert_eq!(sub.labels(), &[0, 0]);
        assert_eq!(sub.classes(), 2);
        assert!(data.subset(&[]).unwrap().is_empty());
        assert!(matches!(
            data.subset(&[0, 3]),
            Err(DataError::IndexOutOfRange { index: 3, len: 3 })
        ));
        assert!(data.clone().with_classes(1).is_err());
        assert_eq!(data.with_classes(5).unwrap().classes(), 5);
    }

    fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut out = IDX_IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [n, rows, cols] {
            out.extend_from_slice(&d.to_be_bytes());
        }
        out.extend_from_slice(pixels);
        out
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut out = IDX_LABELS_MAGIC.to_be_bytes().to_vec();
        out.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        out.extend_from_slice(labels);
        out
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn idx_round_trips_in_memory() {
        let images = idx_images(3, 1, 2, &[0, 255, 51, 102, 255, 0]);
        let labels = idx_labels(&[1, 4, 0]);
        let data = parse_idx(&images, &labels).unwrap();
        assert_eq!((data.len(), data.dim(), data.classes()), (3, 2, 5));
        assert_eq!(*data.features(), [0.0, 1.0, 0.2, 0.4, 1.0, 0.0]);
        assert_eq!(data.labels(), &[1, 4, 0]);
    }

    #[test]
    fn idx_loads_raw_and_gzip_files() {
        let dir = std::env::temp_dir().join(format!("fedtune-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let images = idx_images(2, 2, 2, &[0, 1, 2, 3, 4, 5, 6, 255]);
        let labels = idx_labels(&[9, 3]);
        std::fs::write(dir.join("img"), &images).unwrap();
        std::fs::write(dir.join("img.gz"), gzip(&images)).unwrap();
        std::fs::write(dir.join("lbl.gz"), gzip(&labels)).unwrap();
        let raw = load_idx(dir.join("img"), dir.join("lbl.gz")).unwrap();
        let gz = load_idx(dir.join("img.gz"), dir.join("lbl.gz")).unwrap();
        assert_eq!(raw, gz);
        assert_eq!(gz.labels(), &[9, 3]);
        assert_eq!(gz.features()[7], 1.0);

        std::fs::write(dir.join("bad.gz"), &gzip(&images)[..20]).unwrap();
        let err = load_idx(dir.join("bad.gz"), dir.join("lbl.gz")).unwrap_err();
        assert!(err.to_string().contains("bad.gz"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idx_rows_stream_only_the_chosen_images_and_match_a_full_load() {
        let dir = std::env::temp_dir().join(format!("fedtune-idx-rows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pixels: Vec<u8> = (0..5 * 6).map(|i| (i * 7 % 256) as u8).collect();
        let images = idx_images(5, 2, 3, &pixels);
        let labels = idx_labels(&[4, 1, 0, 2, 3]);
        std::fs::write(dir.join("img"), &images).unwrap();
        std::fs::write(dir.join("img.gz"), gzip(&images)).unwrap();
        std::fs::write(dir.join("lbl.gz"), gzip(&labels)).unwrap();
        let all = load_idx(dir.join("img"), dir.join("lbl.gz"))
            .unwrap()
            .with_classes(5)
            .unwrap();
        let label_list = load_idx_labels(dir.join("lbl.gz")).unwrap();
        assert_eq!(label_list, vec![4, 1, 0, 2, 3]);
        for file in ["img", "img.gz"] {
            let rows = [3, 0, 3];
            let some = load_idx_rows(dir.join(file), &label_list, &rows, 5).unwrap();
            assert_eq!(some, all.subset(&rows).unwrap(), "{file}");
        }
        // A row past the end, a file cut short, and labels of another length are errors.
        assert!(matches!(
            load_idx_rows(dir.join("img"), &label_list, &[5], 5),
            Err(DataError::IndexOutOfRange { index: 5, len: 5 })
        ));
        std::fs::write(dir.join("short"), &images[..16 + 6 * 3 + 2]).unwrap();
        let err = load_idx_rows(dir.join("short"), &label_list, &[4], 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("short") && err.contains("truncated"), "{err}");
        assert!(matches!(
            load_idx_rows(dir.join("img"), &label_list[..4], &[0], 5),
            Err(DataError::IdxCountMismatch { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idx_rejects_bad_magic_truncation_and_mismatch() {
        let images = idx_images(2, 1, 2, &[1, 2, 3, 4]);
        let labels = idx_labels(&[0, 1]);
        assert!(matches!(
            parse_idx(&labels, &labels),
            Err(DataError::IdxMagic {
                what: "images",
                got: 0x801,
                ..
            })
        ));
        assert!(matches!(
            parse_idx(&images, &images),
            Err(DataError::IdxMagic { what: "labels", .. })
        ));
        assert!(matches!(
            parse_idx(&images[..images.len() - 1], &labels),
            Err(DataError::IdxTruncated { what: "images", .. })
        ));
        assert!(matches!(
            parse_idx(&images[..10], &labels),
            Err(DataError::IdxTruncated { .. })
        ));
        assert!(matches!(
            parse_idx(&images[..2], &labels),
            Err(DataError::IdxTruncated { .. })
        ));
        let mut long = images.clone();
        long.push(0);
        assert!(matches!(
            parse_idx(&long, &labels),
            Err(DataError::IdxTrailing { extra: 1, .. })
        ));
        assert!(matches!(
            parse_idx(&images, &idx_labels(&[0])),
            Err(DataError::IdxCountMismatch { images: 2, labels: 1 })
        ));
        assert!(matches!(
            parse_idx(&idx_images(1, 0, 2, &[]), &idx_labels(&[0])),
            Err(DataError::IdxImageSize { .. })
        ));
        assert!(matches!(
            parse_idx(&idx_images(0, 2, 2, &[]), &idx_labels(&[])),
            Err(DataError::NoRows)
        ));
    }

    #[test]
    fn idx_huge_header_errors_without_allocating() {
        let labels = idx_labels(&[0; 8]);
        for size in [1 << 16, u32::MAX] {
            let images = idx_images(u32::MAX, size, size, &[0; 64]);
            assert!(matches!(
                parse_idx(&images, &labels),
                Err(DataError::IdxTruncated {
                    what: "images",
                    got: 80,
                    ..
                })
            ));
        }
    }

    #[test]
    fn gunzip_enforces_its_limit() {
        let packed = gzip(&[0u8; 4096]);
        assert_eq!(gunzip(&packed, 4096).unwrap().len(), 4096);
        assert!(matches!(
            gunzip(&packed, 4095),
            Err(DataError::TooLarge { limit: 4095 })
        ));
    }

    #[test]
    fn missing_fashion_mnist_says_how_to_install() {
        let err = load_fashion_mnist("/nonexistent", true).unwrap_err();
        assert!(
            err.to_string().contains("apt-get install dataset-fashion-mnist"),
            "{err}"
        );
        assert!(err.to_string().contains("train-images-idx3-ubyte.gz"), "{err}");
    }
}
