//! A small RFC 4180 CSV reader for manifests and WILDS metadata.
//!
//! Fields are separated by `,`, records by `\n` or `\r\n`. A field that starts with `"` is
//! quoted: it runs to the next lone `"`, may contain `,` and line breaks, and `""` inside it
//! stands for one `"`; it is kept verbatim. Unquoted fields are trimmed of surrounding
//! whitespace. The first record is the header; a UTF-8 byte-order mark before it is ignored,
//! and so are blank lines. Every record must have as many fields as the header. Rows are
//! parsed lazily, so a large file (FMoW's metadata has ~500k rows) is never held as a table.

use std::path::{Path, PathBuf};

use super::{read_text, DataError, Location};

/// A CSV file whose header has been read.
pub(crate) struct CsvFile {
    path: PathBuf,
    text: String,
    columns: Vec<String>,
    body_offset: usize,
    body_line: usize,
}

/// One data record and the 1-based line it starts on.
pub(crate) struct CsvRow {
    pub line: usize,
    pub fields: Vec<String>,
}

impl CsvFile {
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let mut text = read_text(path)?;
        if text.starts_with('\u{feff}') {
            text.drain(..'\u{feff}'.len_utf8());
        }
        let mut cursor = Cursor::new(path, &text, 0, 1);
        let header = match cursor.next_record() {
            Some(header) => header?,
            None => return Err(csv_error(path, 1, "the file is empty: no header row".to_owned())),
        };
        reject_duplicate_columns(path, &header)?;
        let (body_offset, body_line) = (cursor.pos, cursor.line);
        Ok(Self { path: path.to_owned(), columns: header.fields, text, body_offset, body_line })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index of a required column.
    pub fn column(&self, name: &str) -> Result<usize, DataError> {
        self.optional_column(name).ok_or_else(|| DataError::MissingColumn {
            path: self.path.clone(),
            column: name.to_owned(),
            available: self.columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", "),
        })
    }

    /// The index of a column that may be absent.
    pub fn optional_column(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c == name)
    }

    /// The data records, in file order.
    pub fn rows(&self) -> Rows<'_> {
        Rows {
            cursor: Cursor::new(&self.path, &self.text, self.body_offset, self.body_line),
            width: self.columns.len(),
        }
    }
}

fn reject_duplicate_columns(path: &Path, header: &CsvRow) -> Result<(), DataError> {
    for (i, name) in header.fields.iter().enumerate() {
        if header.fields[..i].contains(name) {
            return Err(csv_error(path, header.line, format!("column `{name}` appears twice in the header")));
        }
    }
    Ok(())
}

fn csv_error(path: &Path, line: usize, reason: String) -> DataError {
    DataError::Csv { at: Location::line(path, line), reason }
}

/// Iterator over the data records of a [`CsvFile`]; it stops after the first error.
pub(crate) struct Rows<'a> {
    cursor: Cursor<'a>,
    width: usize,
}

impl Iterator for Rows<'_> {
    type Item = Result<CsvRow, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let row = match self.cursor.next_record()? {
            Ok(row) => row,
            Err(error) => return Some(Err(error)),
        };
        if row.fields.len() != self.width {
            self.cursor.stop();
            let reason = format!("{} fields, but the header has {}", row.fields.len(), self.width);
            return Some(Err(csv_error(self.cursor.path, row.line, reason)));
        }
        Some(Ok(row))
    }
}

/// The parser's position in the text.
struct Cursor<'a> {
    path: &'a Path,
    text: &'a str,
    pos: usize,
    line: usize,
}

impl<'a> Cursor<'a> {
    fn new(path: &'a Path, text: &'a str, pos: usize, line: usize) -> Self {
        Self { path, text, pos, line }
    }

    fn stop(&mut self) {
        self.pos = self.text.len();
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// The next non-blank record, or `None` at the end of the text.
    fn next_record(&mut self) -> Option<Result<CsvRow, DataError>> {
        while self.pos < self.text.len() {
            let line = self.line;
            match self.read_record() {
                Ok(fields) if fields.len() == 1 && fields[0].is_empty() => continue,
                Ok(fields) => return Some(Ok(CsvRow { line, fields })),
                Err(error) => {
                    self.stop();
                    return Some(Err(error));
                }
            }
        }
        None
    }

    fn read_record(&mut self) -> Result<Vec<String>, DataError> {
        let mut fields = Vec::new();
        loop {
            let field = if self.peek() == Some(b'"') { self.read_quoted()? } else { self.read_unquoted() };
            fields.push(field);
            if self.peek() == Some(b',') {
                self.pos += 1;
            } else {
                self.consume_line_end();
                return Ok(fields);
            }
        }
    }

    /// An unquoted field: up to the next `,` or line break, trimmed.
    fn read_unquoted(&mut self) -> String {
        let rest = &self.text[self.pos..];
        let len = rest.find([',', '\n']).unwrap_or(rest.len());
        self.pos += len;
        rest[..len].trim().to_owned()
    }

    /// A quoted field, starting at its opening quote.
    fn read_quoted(&mut self) -> Result<String, DataError> {
        let start_line = self.line;
        self.pos += 1;
        let mut field = String::new();
        loop {
            let rest = &self.text[self.pos..];
            let Some(quote) = rest.find('"') else {
                let reason = "a quoted field is never closed".to_owned();
                return Err(csv_error(self.path, start_line, reason));
            };
            field.push_str(&rest[..quote]);
            self.line += rest[..quote].matches('\n').count();
            self.pos += quote + 1;
            if self.peek() == Some(b'"') {
                field.push('"');
                self.pos += 1;
            } else {
                break;
            }
        }
        self.skip_spaces();
        match self.peek() {
            None | Some(b',') | Some(b'\n') => Ok(field),
            Some(_) => {
                Err(csv_error(self.path, self.line, "text after the closing quote of a field".to_owned()))
            }
        }
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\r')) {
            self.pos += 1;
        }
    }

    fn consume_line_end(&mut self) {
        if self.peek() == Some(b'\n') {
            self.pos += 1;
            self.line += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Parsed = (Vec<String>, Vec<(usize, Vec<String>)>);

    /// The header and the `(line, fields)` of each row.
    fn parse(text: &str) -> Result<Parsed, DataError> {
        let path = Path::new("t.csv");
        let mut cursor = Cursor::new(path, text, 0, 1);
        let header = cursor.next_record().expect("a header")?;
        let rows = Rows { width: header.fields.len(), cursor };
        let rows = rows.map(|r| r.map(|r| (r.line, r.fields))).collect::<Result<_, _>>()?;
        Ok((header.fields, rows))
    }

    #[test]
    fn quoted_fields_hold_commas_quotes_and_line_breaks() {
        let (header, rows) = parse("a,b\r\n\"x, \"\"y\"\"\",\"two\nlines\"\n\n  plain  ,\"\"\n").unwrap();
        assert_eq!(header, ["a", "b"]);
        assert_eq!(rows[0], (2, vec!["x, \"y\"".to_owned(), "two\nlines".to_owned()]));
        assert_eq!(rows[1], (5, vec!["plain".to_owned(), String::new()]));
    }

    #[test]
    fn ragged_rows_and_open_quotes_name_their_line() {
        let ragged = parse("a,b\n1,2\n3\n").unwrap_err().to_string();
        assert!(ragged.contains("t.csv:3") && ragged.contains("1 fields"), "{ragged}");
        let open = parse("a\n\"never closed\n").unwrap_err().to_string();
        assert!(open.contains("t.csv:2") && open.contains("never closed"), "{open}");
        let trailing = parse("a,b\n\"x\"y,2\n").unwrap_err().to_string();
        assert!(trailing.contains("after the closing quote"), "{trailing}");
    }
}
