//! Rows a user or a device holds in a file: CSV with a header, or JSON Lines, read as
//! text or feature columns with an optional label, every problem named by file and row.
//!
//! - **CSV** (`.csv`): the first row names the columns. A text row's text is its `text`
//!   column (or the one named); a feature row's features are every other column but the
//!   label's, in file order, each a number.
//! - **JSON Lines** (`.jsonl`, `.json`): one object per line. A text row's text is its
//!   `text` field (or the one named); a feature row's features are its `features` array.
//!   Blank lines are skipped.
//!
//! A label is the label column or field: a class name, or a class id (a whole number).
//! Rows are numbered from 1 as a reader counts them: a CSV's header is row 1, a JSON
//! Lines file's first line is row 1.

use std::path::{Path, PathBuf};

/// One row's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A text to tokenize.
    Text(String),
    /// Feature values.
    Features(Vec<f32>),
    /// An image file, read as the model's input (a row of an image folder: see
    /// [`crate::image_folder`]).
    Image(PathBuf),
}

/// One row of a table file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's number in the file (from 1; see the module docs).
    pub line: usize,
    /// Its text or features.
    pub content: Content,
    /// Its label as written (a class name or id), when the file has labels.
    pub label: Option<String>,
}

/// What to read from a table file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The text column or field, for a text model; `None` reads feature columns.
    pub text: Option<String>,
    /// The label column or field; `None` reads no labels.
    pub label: Option<String>,
    /// Whether every row must have a label.
    pub label_required: bool,
}

/// Why a table file could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The file could not be read, or its format is unknown.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// One row is unusable.
    #[error("{path}, row {line}: {reason}")]
    Row {
        /// The file.
        path: PathBuf,
        /// The row (from 1).
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
}

/// Reads every row of `path` (CSV or JSON Lines, by extension) as `columns` says.
///
/// # Errors
/// [`TableError::File`] for an unreadable file, an unknown extension or a missing
/// column; [`TableError::Row`] naming the row for a malformed row, a missing text or
/// label, a feature that is not a number, or rows of different widths.
pub fn read_rows(path: &Path, columns: &Columns) -> Result<Vec<Row>, TableError> {
    let file_error = |reason: String| TableError::File {
        path: path.to_path_buf(),
        reason,
    };
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let rows = match extension.as_str() {
        "csv" => read_csv(path, columns)?,
        "jsonl" | "json" => read_jsonl(path, columns)?,
        _ => return Err(file_error("unknown table format (expected .csv or .jsonl)".into())),
    };
    let widths = rows.iter().filter_map(|r| match &r.content {
        Content::Features(f) => Some((r.line, f.len())),
        Content::Text(_) | Content::Image(_) => None,
    });
    let mut first = None;
    for (line, width) in widths {
        match first {
            None => first = Some(width),
            Some(w) if w != width => {
                return Err(TableError::Row {
                    path: path.to_path_buf(),
                    line,
                    reason: format!("{width} features where the first row has {w}"),
                });
            }
            Some(_) => {}
        }
    }
    Ok(rows)
}

fn read_csv(path: &Path, columns: &Columns) -> Result<Vec<Row>, TableError> {
    let file_error = |reason: String| TableError::File {
        path: path.to_path_buf(),
        reason,
    };
    let row_error = |line: usize, reason: String| TableError::Row {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_path(path)
        .map_err(|e| file_error(e.to_string()))?;
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| file_error(e.to_string()))?
        .iter()
        .map(|h| h.trim().to_string())
        .collect();
    let find = |name: &str| {
        header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| file_error(format!("no column `{name}` (the header names {})", header.join(", "))))
    };
    let text = columns.text.as_deref().map(find).transpose()?;
    let label = match columns.label.as_deref() {
        Some(name) if columns.label_required => Some(find(name)?),
        Some(name) => header.iter().position(|h| h == name),
        None => None,
    };
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let line = index + 2;
        let record = record.map_err(|e| row_error(line, e.to_string()))?;
        if record.len() != header.len() {
            return Err(row_error(
                line,
                format!("{} fields where the header names {}", record.len(), header.len()),
            ));
        }
        let label = match label {
            Some(i) => match record[i].trim() {
                "" if columns.label_required => return Err(row_error(line, "no label".into())),
                "" => None,
                value => Some(value.to_string()),
            },
            None => None,
        };
        let content = match text {
            Some(i) => Content::Text(record[i].to_string()),
            None => Content::Features(
                record
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| Some(*i) != label_column(&header, columns))
                    .map(|(i, value)| {
                        value.trim().parse::<f32>().map_err(|_| {
                            row_error(line, format!("column `{}` holds `{value}`, not a number", header[i]))
                        })
                    })
                    .collect::<Result<_, _>>()?,
            ),
        };
        rows.push(Row { line, content, label });
    }
    Ok(rows)
}

/// The label column's position, if the header has it.
fn label_column(header: &[String], columns: &Columns) -> Option<usize> {
    let name = columns.label.as_deref()?;
    header.iter().position(|h| h == name)
}

fn read_jsonl(path: &Path, columns: &Columns) -> Result<Vec<Row>, TableError> {
    let row_error = |line: usize, reason: String| TableError::Row {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| TableError::File {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut rows = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(raw).map_err(|e| row_error(line, format!("not JSON: {e}")))?;
        let object = value
            .as_object()
            .ok_or_else(|| row_error(line, "not a JSON object".into()))?;
        let label = match columns.label.as_deref().and_then(|name| object.get(name)) {
            Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_string()),
            Some(serde_json::Value::Number(n)) => Some(n.to_string()),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => return Err(row_error(line, format!("label {other} is not a class name or id"))),
        };
        if label.is_none() && columns.label_required {
            return Err(row_error(
                line,
                format!("no label (field `{}`)", columns.label.as_deref().unwrap_or("label")),
            ));
        }
        let content = match columns.text.as_deref() {
            Some(field) => match object.get(field) {
                Some(serde_json::Value::String(s)) => Content::Text(s.clone()),
                Some(_) => return Err(row_error(line, format!("field `{field}` is not a string"))),
                None => return Err(row_error(line, format!("no field `{field}`"))),
            },
            None => {
                let features = object
                    .get("features")
                    .and_then(serde_json::Value::as_array)
                    .ok_or_else(|| row_error(line, "no `features` array".into()))?;
                Content::Features(
                    features
                        .iter()
                        .map(|v| {
                            v.as_f64()
                                .map(|x| x as f32)
                                .ok_or_else(|| row_error(line, format!("feature {v} is not a number")))
                        })
                        .collect::<Result<_, _>>()?,
                )
            }
        };
        rows.push(Row { line, content, label });
    }
    Ok(rows)
}

/// Maps written labels to class ids: a name in `classes`, or (when no name matches) a
/// whole number below `count`.
///
/// # Errors
/// A message naming the label and the classes when it is neither.
pub fn class_id(label: &str, classes: &[String], count: usize) -> Result<u32, String> {
    if let Some(id) = classes.iter().position(|c| c == label) {
        return Ok(id as u32);
    }
    match label.parse::<u32>() {
        Ok(id) if (id as usize) < count => Ok(id),
        _ if classes.is_empty() => Err(format!("label `{label}` is not a class id below {count}")),
        _ => Err(format!(
            "label `{label}` is not one of the model's classes ({})",
            classes.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, content: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fedtune-table-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn text(label: Option<&str>, required: bool) -> Columns {
        Columns {
            text: Some("text".into()),
            label: label.map(String::from),
            label_required: required,
        }
    }

    #[test]
    fn csv_and_jsonl_give_texts_features_and_labels() {
        let csv = file("t.csv", "id,text,label\n1,\"a rope, long\",artifact\n2,a dog,animal\n");
        let rows = read_rows(&csv, &text(Some("label"), true)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].content, Content::Text("a rope, long".into()));
        assert_eq!((rows[0].line, rows[0].label.as_deref()), (2, Some("artifact")));

        let jsonl = file(
            "t.jsonl",
            "{\"text\": \"a dog\", \"label\": 2}\n\n{\"text\": \"a cat\"}\n",
        );
        let rows = read_rows(&jsonl, &text(Some("label"), false)).unwrap();
        assert_eq!(rows[0].label.as_deref(), Some("2"));
        assert_eq!((rows[1].line, rows[1].label.clone()), (3, None));

        let features = file("f.csv", "x,y,species\n1.5,2,setosa\n3,4,virginica\n");
        let columns = Columns {
            text: None,
            label: Some("species".into()),
            label_required: true,
        };
        let rows = read_rows(&features, &columns).unwrap();
        assert_eq!(rows[1].content, Content::Features(vec![3.0, 4.0]));
        let unlabelled = file("g.csv", "x,y\n1,2\n");
        let rows = read_rows(
            &unlabelled,
            &Columns {
                label_required: false,
                ..columns
            },
        )
        .unwrap();
        assert_eq!(
            (rows[0].content.clone(), rows[0].label.clone()),
            (Content::Features(vec![1.0, 2.0]), None)
        );
    }

    #[test]
    fn every_bad_row_is_named_by_file_and_row() {
        let cases = [
            (
                "a.csv",
                "text\nhello\n",
                text(Some("label"), true),
                "no column `label` (the header names text)",
            ),
            (
                "b.csv",
                "text,label\nhello,\n",
                text(Some("label"), true),
                "row 2: no label",
            ),
            (
                "c.jsonl",
                "{\"text\": 3, \"label\": \"x\"}\n",
                text(Some("label"), true),
                "row 1: field `text` is not a string",
            ),
            (
                "d.jsonl",
                "{\"text\": \"a\"}\nnot json\n",
                text(None, false),
                "row 2: not JSON",
            ),
            (
                "e.csv",
                "x,label\none,a\n",
                Columns {
                    text: None,
                    label: Some("label".into()),
                    label_required: true,
                },
                "row 2: column `x` holds `one`, not a number",
            ),
            (
                "f.csv",
                "x,y,label\n1,2,a\n1,2\n",
                Columns {
                    text: None,
                    label: Some("label".into()),
                    label_required: true,
                },
                "row 3: 2 fields where the header names 3",
            ),
            ("g.txt", "", text(None, false), "unknown table format"),
        ];
        for (name, content, columns, message) in cases {
            let err = read_rows(&file(name, content), &columns).unwrap_err().to_string();
            assert!(err.contains(name) && err.contains(message), "{name}: {err}");
        }
    }

    #[test]
    fn labels_are_class_names_or_ids() {
        let classes = ["cat".to_string(), "dog".to_string()];
        assert_eq!(class_id("dog", &classes, 2), Ok(1));
        assert_eq!(class_id("0", &classes, 2), Ok(0));
        assert!(
            class_id("bird", &classes, 2)
                .unwrap_err()
                .contains("not one of the model's classes (cat, dog)")
        );
        assert!(class_id("7", &[], 3).unwrap_err().contains("not a class id below 3"));
    }
}
