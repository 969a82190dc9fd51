//! The FER2013 CSV format: header `emotion,pixels,Usage`, one face per line,
//! `pixels` = 2304 space-separated integers 0..=255 (48x48, row-major),
//! `emotion` = 0..=6 in [`models::FER2013_CLASSES`] order. Plain or gzip.
//!
//! Columns are found by name (case-insensitive), so Kaggle's `train.csv`
//! (`emotion,pixels`, no `Usage`) also loads, with [`Fer2013Options::usage`] `None`.

use std::fmt;
use std::io::BufRead;
use std::path::Path;
use std::str::FromStr;

use super::{
    DataError, Dataset, ErrorPolicy, IMAGE_PIXELS, LoadReport, NUM_CLASSES, Origin, RowProblem,
    SkippedRow, header_columns, next_line, open_text, show,
};

/// FER2013's three splits (the CSV's `Usage` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Usage {
    /// The training split, 28,709 rows.
    Training,
    /// The public test split, 3,589 rows: model selection and early stopping.
    PublicTest,
    /// The private test split, 3,589 rows: held out, absent from the shared data.
    PrivateTest,
}

impl Usage {
    /// The spelling in the CSV file.
    pub fn as_str(self) -> &'static str {
        match self {
            Usage::Training => "Training",
            Usage::PublicTest => "PublicTest",
            Usage::PrivateTest => "PrivateTest",
        }
    }

    fn parse_bytes(b: &[u8]) -> Option<Self> {
        match b {
            b"Training" => Some(Usage::Training),
            b"PublicTest" => Some(Usage::PublicTest),
            b"PrivateTest" => Some(Usage::PrivateTest),
            _ => None,
        }
    }
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Usage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Usage::parse_bytes(s.trim().as_bytes()).ok_or_else(|| {
            format!("unknown usage `{s}` (expected Training, PublicTest or PrivateTest)")
        })
    }
}

/// How to read a FER2013 CSV file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Fer2013Options {
    /// Keep only rows of this split; `None` keeps every row.
    pub usage: Option<Usage>,
    /// What to do with a bad row (wrong pixel count, non-numeric value, label
    /// out of range, missing field): fail (default) or skip and report it.
    pub on_error: ErrorPolicy,
}

impl Fer2013Options {
    /// Rows of one split, failing on bad rows.
    pub fn only(usage: Usage) -> Self {
        Self {
            usage: Some(usage),
            on_error: ErrorPolicy::Fail,
        }
    }

    /// These options with another [`ErrorPolicy`].
    pub fn with_policy(self, on_error: ErrorPolicy) -> Self {
        Self { on_error, ..self }
    }
}

/// Reads a FER2013 CSV file (`.csv`, or gzip whatever its name), streaming
/// line by line. Samples keep their row index ([`Origin::Row`]) for FER+.
///
/// Bad rows are handled as [`Fer2013Options::on_error`] says; under
/// [`ErrorPolicy::Fail`] the error names the file and the 1-based line. Rows
/// of another split than the one requested are counted in
/// [`LoadReport::other_split`] without parsing their pixels.
pub fn load_fer2013(
    path: impl AsRef<Path>,
    opts: &Fer2013Options,
) -> Result<(Dataset, LoadReport), DataError> {
    let path = path.as_ref();
    let mut reader = open_text(path)?;
    read_fer2013(&mut reader, path, opts)
}

/// [`load_fer2013`] on an open reader; `path` only names the source in errors.
pub fn read_fer2013(
    reader: &mut dyn BufRead,
    path: &Path,
    opts: &Fer2013Options,
) -> Result<(Dataset, LoadReport), DataError> {
    let mut buf = Vec::with_capacity(1 << 14);
    if !next_line(reader, &mut buf, path, 1)? {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let header = header_columns(&buf);
    let cols = Columns::find(&header).ok_or_else(|| DataError::BadHeader {
        path: path.to_path_buf(),
        expected: "columns `emotion` and `pixels` (and `Usage`)",
        found: show(&buf),
    })?;
    if let (Some(usage), None) = (opts.usage, cols.usage) {
        return Err(DataError::NoUsageColumn {
            path: path.to_path_buf(),
            usage,
        });
    }

    let classes = models::FER2013_CLASSES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let mut ds = Dataset::empty(classes);
    let mut report = LoadReport::default();
    let mut line = 1;
    loop {
        line += 1;
        if !next_line(reader, &mut buf, path, line)? {
            break;
        }
        report.seen += 1;
        let row = line - 2;
        let start = ds.pixels_mut().len();
        match parse_row(&buf, &header, &cols, opts.usage, ds.pixels_mut()) {
            Ok(Some((label, usage))) => ds.push_meta(label, Origin::Row { row, usage }),
            Ok(None) => report.other_split += 1,
            Err(problem) => {
                ds.pixels_mut().truncate(start);
                match opts.on_error {
                    ErrorPolicy::Fail => {
                        return Err(DataError::BadRow {
                            path: path.to_path_buf(),
                            line,
                            problem,
                        });
                    }
                    ErrorPolicy::Skip => report.skipped_rows.push(SkippedRow { line, problem }),
                }
            }
        }
    }
    report.kept = ds.len();
    Ok((ds, report))
}

/// Positions of the columns we use.
struct Columns {
    emotion: usize,
    pixels: usize,
    usage: Option<usize>,
}

impl Columns {
    fn find(header: &[String]) -> Option<Self> {
        let pos = |name: &str| header.iter().position(|c| c.eq_ignore_ascii_case(name));
        Some(Self {
            emotion: pos("emotion")?,
            pixels: pos("pixels")?,
            usage: pos("usage"),
        })
    }
}

/// Parses one data line; on success the pixels have been appended to `out`.
/// `Ok(None)`: the row belongs to another split (nothing appended).
fn parse_row(
    line: &[u8],
    header: &[String],
    cols: &Columns,
    want: Option<Usage>,
    out: &mut Vec<u8>,
) -> Result<Option<(u8, Option<Usage>)>, RowProblem> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(RowProblem::EmptyLine);
    }
    let mut fields: [&[u8]; 16] = [&[]; 16];
    let mut found = 0;
    for f in line.split(|&b| b == b',') {
        if found < fields.len() {
            fields[found] = f;
        }
        found += 1;
    }
    if found < header.len() {
        return Err(RowProblem::MissingField(header[found].clone()));
    }
    if found > header.len() || found > fields.len() {
        return Err(RowProblem::ExtraFields {
            expected: header.len(),
            found,
        });
    }
    let usage = match cols.usage {
        Some(u) => {
            let text = fields[u].trim_ascii();
            let usage =
                Usage::parse_bytes(text).ok_or_else(|| RowProblem::UnknownUsage(show(text)))?;
            if want.is_some_and(|w| w != usage) {
                return Ok(None);
            }
            Some(usage)
        }
        None => None,
    };
    let label = parse_label(fields[cols.emotion].trim_ascii())?;
    let start = out.len();
    out.resize(start + IMAGE_PIXELS, 0);
    if let Err(e) = parse_pixels(fields[cols.pixels], &mut out[start..]) {
        out.truncate(start);
        return Err(e);
    }
    Ok(Some((label, usage)))
}

fn parse_label(text: &[u8]) -> Result<u8, RowProblem> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return Err(RowProblem::BadLabel(show(text)));
    }
    let value = text.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    match u8::try_from(value) {
        Ok(v) if usize::from(v) < NUM_CLASSES => Ok(v),
        _ => Err(RowProblem::LabelOutOfRange(value)),
    }
}

/// Parses space-separated 0..=255 integers into `out` (exactly `out.len()` of them).
fn parse_pixels(field: &[u8], out: &mut [u8]) -> Result<(), RowProblem> {
    let mut count = 0;
    for token in field
        .split(|b| b.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
    {
        let mut value: u32 = 0;
        for &b in token {
            if !b.is_ascii_digit() {
                return Err(RowProblem::BadPixel {
                    index: count,
                    token: show(token),
                });
            }
            value = value.saturating_mul(10).saturating_add(u32::from(b - b'0'));
        }
        let Ok(v) = u8::try_from(value) else {
            return Err(RowProblem::PixelOutOfRange {
                index: count,
                value,
            });
        };
        if let Some(slot) = out.get_mut(count) {
            *slot = v;
        }
        count += 1;
    }
    if count == out.len() {
        Ok(())
    } else {
        Err(RowProblem::PixelCount(count))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Write};

    use super::*;

    /// A valid pixel field whose values are `seed + i` (mod 256).
    pub(crate) fn pixels_text(seed: usize) -> String {
        (0..IMAGE_PIXELS)
            .map(|i| ((seed + i) % 256).to_string())
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn fixture() -> String {
        let mut s = String::from("emotion,pixels,Usage\n");
        s += &format!("3,{},Training\n", pixels_text(0)); // line 2 ok
        s += &format!("9,{},Training\n", pixels_text(1)); // line 3 label out of range
        s += &format!("0,{},PublicTest\n", pixels_text(2)); // line 4 ok
        s += "4,1 2 3,Training\n"; // line 5 pixel count
        s += &format!("x,{},Training\n", pixels_text(3)); // line 6 bad label
        s += &format!("2,{}\n", pixels_text(4)); // line 7 missing Usage
        let mut bad_pixel = pixels_text(5);
        bad_pixel.replace_range(0..1, "q");
        s += &format!("1,{bad_pixel},Training\n"); // line 8 non-numeric pixel
        s += &format!("6,{},PrivateTest\r\n", pixels_text(6)); // line 9 ok, CRLF
        s += &format!("5,{},Training", pixels_text(7)); // line 10 ok, no final newline
        s
    }

    fn read(text: &str, opts: &Fer2013Options) -> Result<(Dataset, LoadReport), DataError> {
        read_fer2013(
            &mut Cursor::new(text.as_bytes()),
            Path::new("fix.csv"),
            opts,
        )
    }

    #[test]
    fn fail_policy_names_file_and_line() {
        let err = read(&fixture(), &Fer2013Options::default()).unwrap_err();
        assert!(matches!(
            err,
            DataError::BadRow {
                line: 3,
                problem: RowProblem::LabelOutOfRange(9),
                ..
            }
        ));
        assert_eq!(err.to_string(), "fix.csv:3: label 9 is out of range 0..=6");
    }

    #[test]
    fn skip_policy_counts_each_bad_row_with_its_reason() {
        let opts = Fer2013Options::default().with_policy(ErrorPolicy::Skip);
        let (ds, report) = read(&fixture(), &opts).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(report.seen, 9);
        assert_eq!(report.kept, 4);
        let lines: Vec<usize> = report.skipped_rows.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![3, 5, 6, 7, 8]);
        let problems: Vec<&RowProblem> = report.skipped_rows.iter().map(|s| &s.problem).collect();
        assert_eq!(problems[0], &RowProblem::LabelOutOfRange(9));
        assert_eq!(problems[1], &RowProblem::PixelCount(3));
        assert_eq!(problems[2], &RowProblem::BadLabel("x".into()));
        assert_eq!(problems[3], &RowProblem::MissingField("Usage".into()));
        assert!(matches!(problems[4], RowProblem::BadPixel { index: 0, .. }));
        // Kept samples: their row indices, labels, usages and pixels.
        let rows: Vec<Option<usize>> = ds.origins().iter().map(Origin::row).collect();
        assert_eq!(rows, vec![Some(0), Some(2), Some(7), Some(8)]);
        assert_eq!(ds.labels(), &[3, 0, 6, 5]);
        assert_eq!(ds.origin(3).unwrap().usage(), Some(Usage::Training));
        assert_eq!(ds.image(1).unwrap()[..3], [2, 3, 4]);
        assert_eq!(
            ds.image(3).unwrap()[IMAGE_PIXELS - 1],
            ((7 + 2303) % 256) as u8
        );
        assert_eq!(ds.pixels().len(), 4 * IMAGE_PIXELS);
    }

    #[test]
    fn usage_filter() {
        let opts = Fer2013Options::only(Usage::PublicTest).with_policy(ErrorPolicy::Skip);
        let (ds, report) = read(&fixture(), &opts).unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(ds.origin(0).unwrap().line(), Some(4));
        // Bad rows of other splits are not parsed past `Usage`; line 7 has none.
        assert_eq!(report.skipped_rows.len(), 1);
        assert_eq!(report.other_split, 7);
        let opts = Fer2013Options::only(Usage::PrivateTest).with_policy(ErrorPolicy::Skip);
        let (ds, _) = read(&fixture(), &opts).unwrap();
        assert_eq!(ds.labels(), &[6]);
    }

    #[test]
    fn more_row_problems() {
        let check = |row: &str, expected: RowProblem| {
            let text = format!("emotion,pixels,Usage\n{row}\n");
            match read(&text, &Fer2013Options::default()) {
                Err(DataError::BadRow {
                    line: 2, problem, ..
                }) => assert_eq!(problem, expected),
                other => panic!("{row:.30}: {other:?}"),
            }
        };
        check("", RowProblem::EmptyLine);
        check("1", RowProblem::MissingField("pixels".into()));
        check(
            &format!("1,{},Training,extra", pixels_text(0)),
            RowProblem::ExtraFields {
                expected: 3,
                found: 4,
            },
        );
        check(
            &format!("1,{},Test", pixels_text(0)),
            RowProblem::UnknownUsage("Test".into()),
        );
        check(
            &format!("1,{} 256,Training", &pixels_text(0)[2..]),
            RowProblem::PixelOutOfRange {
                index: 2303,
                value: 256,
            },
        );
        check(
            &format!("1,{} 5,Training", pixels_text(0)),
            RowProblem::PixelCount(2305),
        );
        check(
            &format!("-1,{},Training", pixels_text(0)),
            RowProblem::BadLabel("-1".into()),
        );
    }

    #[test]
    fn header_problems() {
        let err = read("", &Fer2013Options::default()).unwrap_err();
        assert!(matches!(err, DataError::EmptyFile { .. }));
        let err = read("label,image\n", &Fer2013Options::default()).unwrap_err();
        assert!(matches!(err, DataError::BadHeader { .. }), "{err}");
        // Kaggle's train.csv layout: no Usage column.
        let text = format!("emotion,pixels\n2,{}\n", pixels_text(0));
        let (ds, _) = read(&text, &Fer2013Options::default()).unwrap();
        assert_eq!(ds.labels(), &[2]);
        assert_eq!(ds.origin(0).unwrap().usage(), None);
        let err = read(&text, &Fer2013Options::only(Usage::Training)).unwrap_err();
        assert!(matches!(err, DataError::NoUsageColumn { .. }));
    }

    #[test]
    fn gzip_file_and_plain_file_give_the_same_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let text = fixture();
        let plain = dir.path().join("f.csv");
        std::fs::write(&plain, &text).unwrap();
        let gz = dir.path().join("f.csv.gz");
        let mut enc =
            flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), Default::default());
        enc.write_all(text.as_bytes()).unwrap();
        enc.finish().unwrap();
        let opts = Fer2013Options::default().with_policy(ErrorPolicy::Skip);
        let (a, ra) = load_fer2013(&plain, &opts).unwrap();
        let (b, rb) = load_fer2013(&gz, &opts).unwrap();
        assert_eq!(a, b);
        assert_eq!(ra, rb);
        assert_eq!(a.len(), 4);
        // The error names the real file.
        let err = load_fer2013(&gz, &Fer2013Options::default()).unwrap_err();
        assert!(err.to_string().contains("f.csv.gz:3:"), "{err}");
        // A truncated gzip is an error naming the file, not a panic.
        let bytes = std::fs::read(&gz).unwrap();
        let cut = dir.path().join("cut.csv.gz");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_fer2013(&cut, &opts).unwrap_err();
        assert!(matches!(err, DataError::ReadLine { .. }), "{err}");
        assert!(err.to_string().contains("cut.csv.gz"), "{err}");
        // A missing file too.
        let err = load_fer2013(dir.path().join("nope.csv"), &opts).unwrap_err();
        assert!(matches!(err, DataError::Io { .. }));
    }

    #[test]
    fn usage_round_trips() {
        for u in [Usage::Training, Usage::PublicTest, Usage::PrivateTest] {
            assert_eq!(u.to_string().parse::<Usage>(), Ok(u));
        }
        assert!("training".parse::<Usage>().is_err());
    }
}
