//! Images a device holds in a folder with one subfolder per class (the layout of
//! torchvision's `ImageFolder`): `dir/cat/1.png`, `dir/dog/a.jpeg`, …
//!
//! - A class is a subfolder's name; its images are its PNG and JPEG files (by extension,
//!   any case), in name order. Hidden entries, other files and files directly in `dir`
//!   are skipped, as `ImageFolder` skips them; a class folder without an image is kept
//!   out (and named by [`ImageFolder::empty`]).
//! - [`read_folder`] decodes every image once, so an unreadable file is an error naming
//!   it before any training; [`pixels`] decodes one again as a model needs it.
//! - [`pixels`] converts an image to a model's input: grey (ITU-R BT.709 luma) for one
//!   channel, RGB (alpha dropped) for three, resized to exactly the model's height and
//!   width with a bilinear filter when its size differs, then laid out channel by channel
//!   (`[channels, height, width]`, row-major), one byte per value.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageReader};

/// Image file extensions read (compared without case).
pub const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// One image of an image folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRow {
    /// The image file.
    pub path: PathBuf,
    /// Its class: the name of the subfolder holding it.
    pub class: String,
}

/// An image folder's images and what it held besides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolder {
    /// Every image, class by class in name order.
    pub images: Vec<ImageRow>,
    /// Class folders that hold no image.
    pub empty: Vec<String>,
}

/// The shape a model takes an image in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageShape {
    /// 1 (grey) or 3 (RGB).
    pub channels: usize,
    /// Rows of pixels.
    pub height: usize,
    /// Columns of pixels.
    pub width: usize,
}

impl ImageShape {
    /// Values per image.
    #[must_use]
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the shape holds no value.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an image folder or an image could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    /// The folder, or a class folder, cannot be listed.
    #[error("{path}: {reason}")]
    Folder {
        /// The folder.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// One image cannot be read or decoded.
    #[error("{path}: not a readable image: {reason}")]
    Image {
        /// The image file.
        path: PathBuf,
        /// The decoder's or the file system's message.
        reason: String,
    },
    /// The model's shape is not one an image converts to.
    #[error("an image converts to 1 (grey) or 3 (RGB) channels of a positive size, not {channels}×{height}×{width}")]
    Shape {
        /// Channels asked for.
        channels: usize,
        /// Height asked for.
        height: usize,
        /// Width asked for.
        width: usize,
    },
}

/// Lists and decodes every image under `dir` (see the module docs).
///
/// # Errors
/// [`ImageError::Folder`] when `dir` or a class folder cannot be listed;
/// [`ImageError::Image`] naming the first file that does not decode. A folder without
/// any image is not an error: a device may hold nothing yet.
pub fn read_folder(dir: &Path) -> Result<ImageFolder, ImageError> {
    let folder_error = |reason: String| ImageError::Folder {
        path: dir.to_path_buf(),
        reason,
    };
    let mut classes = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| folder_error(e.to_string()))? {
        let entry = entry.map_err(|e| folder_error(e.to_string()))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            classes.push(name);
        }
    }
    classes.sort();
    let mut folder = ImageFolder {
        images: Vec::new(),
        empty: Vec::new(),
    };
    for class in classes {
        let class_dir = dir.join(&class);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&class_dir).map_err(|e| ImageError::Folder {
            path: class_dir.clone(),
            reason: e.to_string(),
        })? {
            let path = entry
                .map_err(|e| ImageError::Folder {
                    path: class_dir.clone(),
                    reason: e.to_string(),
                })?
                .path();
            if is_image_file(&path) {
                files.push(path);
            }
        }
        if files.is_empty() {
            folder.empty.push(class);
            continue;
        }
        files.sort();
        for path in files {
            decode(&path)?;
            folder.images.push(ImageRow {
                path,
                class: class.clone(),
            });
        }
    }
    Ok(folder)
}

/// Whether `path` is a visible file with an image extension.
fn is_image_file(path: &Path) -> bool {
    let visible = path.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.'));
    let image = path
        .extension()
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)));
    visible && image && path.is_file()
}

/// Decodes the image at `path`, its format read from its bytes.
fn decode(path: &Path) -> Result<DynamicImage, ImageError> {
    let error = |reason: String| ImageError::Image {
        path: path.to_path_buf(),
        reason,
    };
    ImageReader::open(path)
        .map_err(|e| error(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| error(e.to_string()))?
        .decode()
        .map_err(|e| error(e.to_string()))
}

/// Appends the image at `path` as `shape` (see the module docs) to `out`.
///
/// # Errors
/// [`ImageError::Shape`] for a shape other than 1 or 3 channels of a positive size;
/// [`ImageError::Image`] when the file does not decode.
pub fn pixels(path: &Path, shape: ImageShape, out: &mut Vec<u8>) -> Result<(), ImageError> {
    let ImageShape {
        channels,
        height,
        width,
    } = shape;
    let (Ok(h), Ok(w)) = (u32::try_from(height), u32::try_from(width)) else {
        return Err(ImageError::Shape {
            channels,
            height,
            width,
        });
    };
    if !matches!(channels, 1 | 3) || h == 0 || w == 0 {
        return Err(ImageError::Shape {
            channels,
            height,
            width,
        });
    }
    let image = decode(path)?;
    let image = if image.width() == w && image.height() == h {
        image
    } else {
        image.resize_exact(w, h, FilterType::Triangle)
    };
    if channels == 1 {
        out.extend_from_slice(image.to_luma8().as_raw());
    } else {
        let rgb = image.to_rgb8();
        for channel in 0..3 {
            out.extend(rgb.as_raw().iter().skip(channel).step_by(3));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fedtune-image-folder-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn classes_are_subfolders_and_other_files_are_skipped() {
        let dir = scratch("classes");
        for (class, files) in [("b", vec!["2.PNG", "1.jpg"]), ("a", vec!["x.jpeg"]), ("empty", vec![])] {
            std::fs::create_dir_all(dir.join(class)).unwrap();
            for file in files {
                let format = if file.to_lowercase().ends_with("png") {
                    image::ImageFormat::Png
                } else {
                    image::ImageFormat::Jpeg
                };
                RgbImage::from_pixel(4, 3, Rgb([10, 20, 30]))
                    .save_with_format(dir.join(class).join(file), format)
                    .unwrap();
            }
        }
        std::fs::write(dir.join("b/notes.txt"), "not an image").unwrap();
        std::fs::write(dir.join("b/.hidden.png"), "not read").unwrap();
        std::fs::write(dir.join("top.png"), "not in a class").unwrap();
        std::fs::create_dir_all(dir.join(".cache")).unwrap();
        let folder = read_folder(&dir).unwrap();
        let listed: Vec<(String, String)> = folder
            .images
            .iter()
            .map(|r| {
                (
                    r.class.clone(),
                    r.path.file_name().unwrap().to_string_lossy().into_owned(),
                )
            })
            .collect();
        assert_eq!(
            listed,
            [("a", "x.jpeg"), ("b", "1.jpg"), ("b", "2.PNG")].map(|(c, f)| (c.to_string(), f.to_string()))
        );
        assert_eq!(folder.empty, ["empty"]);
    }

    #[test]
    fn pixels_are_converted_resized_and_planar() {
        let dir = scratch("pixels");
        let path = dir.join("rgb.png");
        let mut image = RgbImage::new(2, 2);
        image.put_pixel(0, 0, Rgb([255, 0, 0]));
        image.put_pixel(1, 0, Rgb([0, 255, 0]));
        image.put_pixel(0, 1, Rgb([0, 0, 255]));
        image.put_pixel(1, 1, Rgb([255, 255, 255]));
        image.save(&path).unwrap();
        let mut out = Vec::new();
        let shape = |channels, height, width| ImageShape {
            channels,
            height,
            width,
        };
        pixels(&path, shape(3, 2, 2), &mut out).unwrap();
        assert_eq!(out, [255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255]);
        out.clear();
        pixels(&path, shape(1, 2, 2), &mut out).unwrap();
        assert_eq!(out[3], 255);
        assert!(
            out[1] > out[0] && out[0] > out[2],
            "green is brightest, blue darkest: {out:?}"
        );

        let grey = dir.join("grey.png");
        GrayImage::from_pixel(8, 8, Luma([200])).save(&grey).unwrap();
        out.clear();
        pixels(&grey, shape(3, 4, 5), &mut out).unwrap();
        assert_eq!(out, vec![200; 60]);
        for bad in [shape(2, 4, 4), shape(1, 0, 4), shape(3, 4, usize::MAX)] {
            assert!(matches!(pixels(&grey, bad, &mut out), Err(ImageError::Shape { .. })));
        }
    }

    #[test]
    fn a_corrupt_image_and_an_empty_folder_are_named() {
        let dir = scratch("corrupt");
        std::fs::create_dir_all(dir.join("cat")).unwrap();
        let nothing = read_folder(&dir).unwrap();
        assert!(nothing.images.is_empty() && nothing.empty == ["cat"]);
        let png = dir.join("cat/broken.png");
        let mut bytes = Vec::new();
        GrayImage::from_pixel(16, 16, Luma([7]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes.truncate(bytes.len() / 2);
        std::fs::write(&png, bytes).unwrap();
        let err = read_folder(&dir).unwrap_err();
        assert!(matches!(&err, ImageError::Image { path, .. } if *path == png), "{err}");
        assert!(err.to_string().contains("broken.png"), "{err}");
        let err = read_folder(&dir.join("missing")).unwrap_err();
        assert!(matches!(err, ImageError::Folder { .. }), "{err}");
    }
}
