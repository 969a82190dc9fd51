//! FER+ crowd labels (Barsoum et al. 2016, `microsoft/FERPlus`
//! `fer2013new.csv`): ten annotators' votes per FER2013 image, joined to
//! FER2013 **by line position** (line *i* of one file describes line *i* of the
//! other; the `Image name` column is not a row index and has duplicates).
//!
//! Columns: `Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF`.
//!
//! # Label policy
//!
//! How a row's ten vote counts become a sample (see [`ferplus_outcome`]):
//!
//! 1. **Not a face.** A row with an empty `Image name` (FER+'s own "not a
//!    face" marking, 158 rows of the shared file) is dropped. So is a row whose
//!    `NF` column has strictly more votes than every other column.
//! 2. **Plurality over all ten columns.** The column with strictly the most
//!    votes decides. If it is one of our seven expressions, that is the hard
//!    label (mapped to [`models::FER2013_CLASSES`] order: anger -> angry,
//!    happiness -> happy, sadness -> sad, ...). If it is `contempt` or
//!    `unknown`, the row is dropped: contempt is not one of the networks'
//!    seven outputs, and "unknown" means the annotators could not tell.
//! 3. **Ties** for the top vote count are dropped by default
//!    ([`TiePolicy::Drop`], like FER+'s own "majority" mode, which needs a
//!    clear winner). [`TiePolicy::FirstInClassOrder`] keeps them instead,
//!    labelled with the tied expression that comes first in FER2013 order
//!    (angry before disgust before ... neutral); a tie among only `contempt`,
//!    `unknown` and `NF` is still dropped.
//! 4. **Soft targets** of kept rows are the votes for our seven expressions
//!    divided by their sum: `contempt`, `unknown` and `NF` votes are discarded,
//!    not spread over the other classes. (A kept row always has at least one
//!    vote for an expression: its label.)
//! 5. **Eight classes.** With [`FerPlusOptions::contempt`] set, `contempt` is
//!    an eighth class ([`FERPLUS8_CLASSES`], label 7) instead of a reason to
//!    drop the row: rows where it has the most votes are kept, and its votes
//!    count in the soft targets. This is FER+'s own label set.
//!
//! On the shared Training rows this keeps 26,778 of 28,709 (150 not a face,
//! 162 contempt, 170 unknown, 1,449 ties); on `PublicTest` 3,372 of 3,589.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use super::{
    DataError, Dataset, ErrorPolicy, Fer2013Options, LoadReport, Origin, RowProblem, SkippedRow,
    Usage, header_columns, load_fer2013, next_line, open_text, show,
};

/// The ten vote columns, in file order.
pub const FERPLUS_COLUMNS: [&str; 10] = [
    "neutral",
    "happiness",
    "surprise",
    "sadness",
    "anger",
    "disgust",
    "fear",
    "contempt",
    "unknown",
    "NF",
];

/// FER+'s eight expressions in output order: FER2013's seven, then contempt.
pub const FERPLUS8_CLASSES: [&str; 8] = [
    "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral", "contempt",
];

/// For each of the first seven vote columns, its FER2013 label.
const TO_FER2013: [u8; 7] = [6, 3, 5, 4, 0, 1, 2];
const CONTEMPT: usize = 7;
const UNKNOWN: usize = 8;

/// One row of the FER+ file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FerPlusRow {
    /// The row's `Usage`.
    pub usage: Usage,
    /// `Image name` (e.g. `fer0000000.png`), `None` where FER+ left it empty
    /// ("not a face").
    pub image_name: Option<String>,
    /// Vote counts in [`FERPLUS_COLUMNS`] order.
    pub votes: [u8; 10],
}

/// A FER+ file in memory, indexed by data row (0-based; line `row + 2`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FerPlusVotes {
    /// The file, for messages.
    pub path: PathBuf,
    /// One entry per data row; `None` for a bad row skipped under [`ErrorPolicy::Skip`].
    pub rows: Vec<Option<FerPlusRow>>,
}

/// What to do with tied votes; see the module documentation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TiePolicy {
    /// Drop rows without a single most-voted column.
    #[default]
    Drop,
    /// Keep them, labelled with the tied expression first in FER2013 order.
    FirstInClassOrder,
}

/// How to turn FER+ votes into samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct FerPlusOptions {
    /// Ties for the most votes.
    pub ties: TiePolicy,
    /// Bad rows in the FER+ file (their FER2013 rows are then dropped).
    pub on_error: ErrorPolicy,
    /// Keep `contempt` as an eighth class (label 7) instead of dropping its
    /// rows; see the module documentation.
    pub contempt: bool,
}

/// What one row of votes becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FerPlusOutcome {
    /// Kept, with this FER2013 label.
    Label(u8),
    /// Dropped: not a face (empty `Image name` or `NF` has the most votes).
    NotFace,
    /// Dropped: `contempt` has the most votes.
    Contempt,
    /// Dropped: `unknown` has the most votes.
    Unknown,
    /// Dropped: several columns share the most votes (under [`TiePolicy::Drop`]).
    Tie,
}

/// How many FER2013 samples each rule kept or dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FerPlusReport {
    /// Samples kept.
    pub kept: usize,
    /// Dropped as not a face.
    pub not_face: usize,
    /// Dropped: most votes for `contempt`.
    pub contempt: usize,
    /// Dropped: most votes for `unknown`.
    pub unknown: usize,
    /// Dropped: tied votes.
    pub ties: usize,
    /// Dropped: their FER+ row was bad and skipped.
    pub bad_row: usize,
}

/// Decides one row; `has_name` is whether its `Image name` is non-empty.
/// See the module documentation for the rules.
pub fn ferplus_outcome(votes: &[u8; 10], has_name: bool, ties: TiePolicy) -> FerPlusOutcome {
    if !has_name {
        return FerPlusOutcome::NotFace;
    }
    let max = votes.iter().copied().max().unwrap_or(0);
    let top: Vec<usize> = (0..votes.len()).filter(|&i| votes[i] == max).collect();
    match top.as_slice() {
        [] => FerPlusOutcome::Tie,
        [one] => match *one {
            i if i < TO_FER2013.len() => FerPlusOutcome::Label(TO_FER2013[i]),
            CONTEMPT => FerPlusOutcome::Contempt,
            UNKNOWN => FerPlusOutcome::Unknown,
            _ => FerPlusOutcome::NotFace, // column 9, `NF`
        },
        _ if max == 0 => FerPlusOutcome::Unknown,
        many => match ties {
            TiePolicy::Drop => FerPlusOutcome::Tie,
            TiePolicy::FirstInClassOrder => many
                .iter()
                .filter_map(|&i| TO_FER2013.get(i).copied())
                .min()
                .map_or(FerPlusOutcome::Tie, FerPlusOutcome::Label),
        },
    }
}

/// The soft target of a row: expression votes over their sum, in FER2013
/// order, then contempt when `contempt` (8 values, else 7); `None` if no
/// counted expression got a vote.
fn soft_target(votes: &[u8; 10], contempt: bool) -> Option<Vec<f32>> {
    let counted = if contempt {
        CONTEMPT + 1
    } else {
        TO_FER2013.len()
    };
    let sum: u32 = votes[..counted].iter().map(|&v| u32::from(v)).sum();
    if sum == 0 {
        return None;
    }
    let mut out = vec![0.0; counted];
    for (col, &label) in TO_FER2013.iter().enumerate() {
        out[usize::from(label)] = f32::from(votes[col]) / sum as f32;
    }
    if contempt {
        out[CONTEMPT] = f32::from(votes[CONTEMPT]) / sum as f32;
    }
    Some(out)
}

/// Reads a FER+ vote file (plain or gzip), streaming.
pub fn load_ferplus_votes(
    path: impl AsRef<Path>,
    on_error: ErrorPolicy,
) -> Result<(FerPlusVotes, LoadReport), DataError> {
    let path = path.as_ref();
    let mut reader = open_text(path)?;
    read_ferplus_votes(&mut reader, path, on_error)
}

/// [`load_ferplus_votes`] on an open reader; `path` names the source in errors.
pub fn read_ferplus_votes(
    reader: &mut dyn BufRead,
    path: &Path,
    on_error: ErrorPolicy,
) -> Result<(FerPlusVotes, LoadReport), DataError> {
    const EXPECTED: &str = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF";
    let mut buf = Vec::with_capacity(256);
    if !next_line(reader, &mut buf, path, 1)? {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let header = header_columns(&buf);
    let header_ok = header.len() == 12
        && EXPECTED
            .split(',')
            .zip(&header)
            .all(|(want, got)| want.eq_ignore_ascii_case(got));
    if !header_ok {
        return Err(DataError::BadHeader {
            path: path.to_path_buf(),
            expected: EXPECTED,
            found: show(&buf),
        });
    }
    let mut votes = FerPlusVotes {
        path: path.to_path_buf(),
        rows: Vec::new(),
    };
    let mut report = LoadReport::default();
    let mut line = 1;
    loop {
        line += 1;
        if !next_line(reader, &mut buf, path, line)? {
            break;
        }
        report.seen += 1;
        match parse_votes_row(&buf, &header) {
            Ok(row) => votes.rows.push(Some(row)),
            Err(problem) => match on_error {
                ErrorPolicy::Fail => {
                    return Err(DataError::BadRow {
                        path: path.to_path_buf(),
                        line,
                        problem,
                    });
                }
                ErrorPolicy::Skip => {
                    votes.rows.push(None);
                    report.skipped_rows.push(SkippedRow { line, problem });
                }
            },
        }
    }
    report.kept = votes.rows.iter().flatten().count();
    Ok((votes, report))
}

fn parse_votes_row(line: &[u8], header: &[String]) -> Result<FerPlusRow, RowProblem> {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(RowProblem::EmptyLine);
    }
    let fields: Vec<&[u8]> = line.split(|&b| b == b',').collect();
    if fields.len() < header.len() {
        return Err(RowProblem::MissingField(header[fields.len()].clone()));
    }
    if fields.len() > header.len() {
        return Err(RowProblem::ExtraFields {
            expected: header.len(),
            found: fields.len(),
        });
    }
    let usage_text = fields[0].trim_ascii();
    let usage = std::str::from_utf8(usage_text)
        .ok()
        .and_then(|s| s.parse::<Usage>().ok())
        .ok_or_else(|| RowProblem::UnknownUsage(show(usage_text)))?;
    let name = fields[1].trim_ascii();
    let image_name = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());
    let mut votes = [0u8; 10];
    for (k, column) in FERPLUS_COLUMNS.iter().enumerate() {
        let text = fields[2 + k].trim_ascii();
        votes[k] = std::str::from_utf8(text)
            .ok()
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|t| t.parse::<u8>().ok())
            .ok_or_else(|| RowProblem::BadVote {
                column,
                token: show(text),
            })?;
    }
    Ok(FerPlusRow {
        usage,
        image_name,
        votes,
    })
}

/// Relabels FER2013 samples with FER+ votes, joining on each sample's row
/// ([`Origin::Row`]): the result keeps the samples the label policy keeps (in
/// the same order, with the same origins), with FER+ majority labels and soft
/// targets over [`models::FER2013_CLASSES`] (the result's classes, whatever
/// `fer`'s were).
///
/// Errors if a sample is not from a CSV row, if the FER+ file has no row for
/// it, or if the two rows disagree on `Usage` (the files are not aligned).
pub fn apply_ferplus(
    fer: &Dataset,
    votes: &FerPlusVotes,
    opts: &FerPlusOptions,
) -> Result<(Dataset, FerPlusReport), DataError> {
    let names: &[&str] = if opts.contempt {
        &FERPLUS8_CLASSES
    } else {
        &models::FER2013_CLASSES
    };
    let mut out = Dataset::empty(names.iter().map(|s| (*s).to_owned()).collect());
    let mut report = FerPlusReport::default();
    for (index, origin) in fer.origins().iter().enumerate() {
        let Origin::Row { row, usage } = origin else {
            return Err(DataError::NotACsvSample { index });
        };
        let Some(entry) = votes.rows.get(*row) else {
            return Err(DataError::FerPlusMissingRow {
                path: votes.path.clone(),
                line: row + 2,
                rows: votes.rows.len(),
            });
        };
        let Some(entry) = entry else {
            report.bad_row += 1;
            continue;
        };
        if let Some(usage) = usage
            && *usage != entry.usage
        {
            return Err(DataError::FerPlusMisaligned {
                path: votes.path.clone(),
                line: row + 2,
                ferplus: entry.usage,
                fer2013: *usage,
            });
        }
        let outcome = match ferplus_outcome(&entry.votes, entry.image_name.is_some(), opts.ties) {
            FerPlusOutcome::Contempt if opts.contempt => FerPlusOutcome::Label(CONTEMPT as u8),
            other => other,
        };
        match outcome {
            FerPlusOutcome::Label(label) => {
                let (Some(pixels), Some(soft)) =
                    (fer.image(index), soft_target(&entry.votes, opts.contempt))
                else {
                    // A kept label always has a vote, and `index` is in range.
                    report.unknown += 1;
                    continue;
                };
                out.push(pixels, label, Some(&soft), origin.clone());
                report.kept += 1;
            }
            FerPlusOutcome::NotFace => report.not_face += 1,
            FerPlusOutcome::Contempt => report.contempt += 1,
            FerPlusOutcome::Unknown => report.unknown += 1,
            FerPlusOutcome::Tie => report.ties += 1,
        }
    }
    Ok((out, report))
}

/// Loads FER2013 rows and relabels them with FER+ in one go: [`load_fer2013`],
/// [`load_ferplus_votes`], [`apply_ferplus`]. Returns the dataset, the FER2013
/// load report and the FER+ report.
pub fn load_ferplus(
    fer2013: impl AsRef<Path>,
    ferplus: impl AsRef<Path>,
    fer_opts: &Fer2013Options,
    plus_opts: &FerPlusOptions,
) -> Result<(Dataset, LoadReport, FerPlusReport), DataError> {
    let (fer, load_report) = load_fer2013(fer2013, fer_opts)?;
    let (votes, _) = load_ferplus_votes(ferplus, plus_opts.on_error)?;
    let (ds, report) = apply_ferplus(&fer, &votes, plus_opts)?;
    Ok((ds, load_report, report))
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::data::IMAGE_PIXELS;

    const HEADER: &str = "Usage,Image name,neutral,happiness,surprise,sadness,anger,disgust,fear,contempt,unknown,NF\n";

    fn votes_of(text: &str, on_error: ErrorPolicy) -> Result<FerPlusVotes, DataError> {
        read_ferplus_votes(
            &mut Cursor::new(text.as_bytes()),
            Path::new("plus.csv"),
            on_error,
        )
        .map(|(v, _)| v)
    }

    #[test]
    fn outcomes() {
        use FerPlusOutcome::*;
        let d = TiePolicy::Drop;
        // neutral happiness surprise sadness anger disgust fear contempt unknown NF
        assert_eq!(
            ferplus_outcome(&[4, 0, 0, 1, 3, 2, 0, 0, 0, 0], true, d),
            Label(6)
        );
        assert_eq!(
            ferplus_outcome(&[0, 0, 0, 0, 6, 0, 0, 4, 0, 0], true, d),
            Label(0)
        );
        assert_eq!(
            ferplus_outcome(&[0, 9, 0, 0, 0, 0, 0, 0, 0, 1], false, d),
            NotFace
        );
        assert_eq!(
            ferplus_outcome(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 10], true, d),
            NotFace
        );
        assert_eq!(
            ferplus_outcome(&[4, 0, 0, 0, 0, 0, 0, 6, 0, 0], true, d),
            Contempt
        );
        assert_eq!(
            ferplus_outcome(&[1, 0, 0, 0, 0, 0, 0, 0, 9, 0], true, d),
            Unknown
        );
        assert_eq!(
            ferplus_outcome(&[0, 0, 0, 5, 0, 0, 5, 0, 0, 0], true, d),
            Tie
        );
        assert_eq!(ferplus_outcome(&[0; 10], true, d), Unknown);
        let k = TiePolicy::FirstInClassOrder;
        // sadness (4) vs fear (2): fear comes first in FER2013 order.
        assert_eq!(
            ferplus_outcome(&[0, 0, 0, 5, 0, 0, 5, 0, 0, 0], true, k),
            Label(2)
        );
        // neutral vs contempt: neutral.
        assert_eq!(
            ferplus_outcome(&[5, 0, 0, 0, 0, 0, 0, 5, 0, 0], true, k),
            Label(6)
        );
        // contempt vs unknown: still dropped.
        assert_eq!(
            ferplus_outcome(&[0, 0, 0, 0, 0, 0, 0, 5, 5, 0], true, k),
            Tie
        );
    }

    #[test]
    fn soft_targets_drop_contempt_unknown_and_nf_votes() {
        let s = soft_target(&[4, 0, 0, 1, 3, 0, 0, 1, 1, 0], false).unwrap();
        // angry 3/8, sad 1/8, neutral 4/8.
        assert_eq!(s, [0.375, 0.0, 0.0, 0.0, 0.125, 0.0, 0.5]);
        assert!(soft_target(&[0, 0, 0, 0, 0, 0, 0, 5, 5, 0], false).is_none());
        let s8 = soft_target(&[4, 0, 0, 1, 3, 0, 0, 2, 1, 0], true).unwrap();
        assert_eq!(s8.len(), 8);
        assert_eq!(s8[7], 0.2);
        assert_eq!(s8[6], 0.4);
        assert!((s8.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(
            soft_target(&[0, 0, 0, 0, 0, 0, 0, 5, 5, 0], true).unwrap()[7],
            1.0
        );
    }

    fn fer_fixture(rows: &[(u8, &str)]) -> Dataset {
        let mut text = String::from("emotion,pixels,Usage\n");
        for (i, (label, usage)) in rows.iter().enumerate() {
            let px = vec![(i * 10).to_string(); IMAGE_PIXELS].join(" ");
            text += &format!("{label},{px},{usage}\n");
        }
        let (ds, _) = crate::data::read_fer2013(
            &mut Cursor::new(text.as_bytes()),
            Path::new("fer.csv"),
            &Fer2013Options::default(),
        )
        .unwrap();
        ds
    }

    #[test]
    fn contempt_as_an_eighth_class() {
        let fer = fer_fixture(&[(0, "Training"), (1, "Training"), (2, "Training")]);
        let text = format!(
            "{HEADER}\
             Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n\
             Training,fer0000001.png,2,0,0,0,0,0,0,6,2,0\n\
             Training,fer0000002.png,0,0,0,0,0,0,0,0,9,1\n"
        );
        let votes = votes_of(&text, ErrorPolicy::Fail).unwrap();
        let (seven, report) = apply_ferplus(&fer, &votes, &FerPlusOptions::default()).unwrap();
        assert_eq!(seven.labels(), &[3]);
        assert_eq!(report.contempt, 1);
        let eight = FerPlusOptions {
            contempt: true,
            ..FerPlusOptions::default()
        };
        let (ds, report) = apply_ferplus(&fer, &votes, &eight).unwrap();
        assert_eq!(ds.classes().len(), 8);
        assert_eq!(ds.classes()[7], "contempt");
        assert_eq!(ds.labels(), &[3, 7]); // happy, contempt; "unknown" still dropped
        assert_eq!(report.contempt, 0);
        assert_eq!(report.unknown, 1);
        assert_eq!(
            ds.soft_target(1).unwrap(),
            &[0., 0., 0., 0., 0., 0., 0.25, 0.75]
        );
    }

    #[test]
    fn join_by_line_position() {
        let fer = fer_fixture(&[
            (0, "Training"),
            (1, "Training"),
            (2, "Training"),
            (3, "PublicTest"),
            (4, "PublicTest"),
        ]);
        let text = format!(
            "{HEADER}\
             Training,fer0000000.png,0,10,0,0,0,0,0,0,0,0\n\
             Training,,0,0,0,0,0,0,0,0,0,10\n\
             Training,fer0000001.png,2,0,0,4,0,0,0,4,0,0\n\
             PublicTest,fer0000002.png,6,0,0,0,0,0,0,4,0,0\n\
             PublicTest,fer0000003.png,0,0,7,0,0,0,0,0,3,0\n"
        );
        let votes = votes_of(&text, ErrorPolicy::Fail).unwrap();
        assert_eq!(votes.rows.len(), 5);
        assert_eq!(votes.rows[1].as_ref().unwrap().image_name, None);
        let (ds, report) = apply_ferplus(&fer, &votes, &FerPlusOptions::default()).unwrap();
        assert_eq!(ds.labels(), &[3, 6, 5]); // happy, neutral, surprise
        let rows: Vec<_> = ds.origins().iter().map(Origin::row).collect();
        assert_eq!(rows, vec![Some(0), Some(3), Some(4)]);
        assert_eq!(ds.image(1).unwrap()[0], 30, "pixels of FER2013 row 3");
        assert_eq!(ds.soft_target(1).unwrap()[6], 1.0);
        assert_eq!(ds.soft_target(2).unwrap()[5], 1.0);
        assert_eq!(
            report,
            FerPlusReport {
                kept: 3,
                not_face: 1,
                ties: 1,
                ..Default::default()
            }
        );
        let keep = FerPlusOptions {
            ties: TiePolicy::FirstInClassOrder,
            ..Default::default()
        };
        let (ds, _) = apply_ferplus(&fer, &votes, &keep).unwrap();
        assert_eq!(ds.labels(), &[3, 4, 6, 5]); // the sadness/contempt tie -> sad
        assert_eq!(ds.soft_target(1).unwrap()[4], 4.0 / 6.0);

        // A subset of FER2013 (one split) joins on its own row numbers.
        let public = fer
            .subset(&fer.indices_with_usage(Usage::PublicTest))
            .unwrap();
        let (ds, _) = apply_ferplus(&public, &votes, &FerPlusOptions::default()).unwrap();
        assert_eq!(ds.labels(), &[6, 5]);
    }

    #[test]
    fn misaligned_or_short_files_are_errors() {
        let fer = fer_fixture(&[(0, "Training"), (1, "PublicTest")]);
        let swapped = format!(
            "{HEADER}PublicTest,a.png,10,0,0,0,0,0,0,0,0,0\nTraining,b.png,10,0,0,0,0,0,0,0,0,0\n"
        );
        let votes = votes_of(&swapped, ErrorPolicy::Fail).unwrap();
        let err = apply_ferplus(&fer, &votes, &FerPlusOptions::default()).unwrap_err();
        assert!(
            matches!(err, DataError::FerPlusMisaligned { line: 2, .. }),
            "{err}"
        );
        let short = format!("{HEADER}Training,a.png,10,0,0,0,0,0,0,0,0,0\n");
        let votes = votes_of(&short, ErrorPolicy::Fail).unwrap();
        let err = apply_ferplus(&fer, &votes, &FerPlusOptions::default()).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::FerPlusMissingRow {
                    line: 3,
                    rows: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_vote_rows_follow_the_policy() {
        let text = format!(
            "{HEADER}Training,a.png,10,0,0,0,0,0,0,0,0,0\nTraining,b.png,x,0,0,0,0,0,0,0,0,0\nTraining,c.png,1,2\n"
        );
        let err = votes_of(&text, ErrorPolicy::Fail).unwrap_err();
        assert_eq!(
            err.to_string(),
            "plus.csv:3: vote column `neutral` holds `x`, not a count"
        );
        let (votes, report) = read_ferplus_votes(
            &mut Cursor::new(text.as_bytes()),
            Path::new("plus.csv"),
            ErrorPolicy::Skip,
        )
        .unwrap();
        assert_eq!(votes.rows.len(), 3);
        assert!(votes.rows[1].is_none() && votes.rows[2].is_none());
        assert_eq!(report.skipped_rows[1].line, 4);
        assert_eq!(
            report.skipped_rows[1].problem,
            RowProblem::MissingField("surprise".into())
        );
        let fer = fer_fixture(&[(0, "Training"), (1, "Training"), (2, "Training")]);
        let (ds, rep) = apply_ferplus(&fer, &votes, &FerPlusOptions::default()).unwrap();
        assert_eq!(ds.len(), 1);
        assert_eq!(rep.bad_row, 2);
        let err = votes_of("Usage,Image name,neutral\n", ErrorPolicy::Fail).unwrap_err();
        assert!(matches!(err, DataError::BadHeader { .. }));
    }

    #[test]
    fn gzip_files_through_load_ferplus() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let fer_text = format!(
            "emotion,pixels,Usage\n0,{},Training\n",
            vec!["1"; IMAGE_PIXELS].join(" ")
        );
        let plus_text = format!("{HEADER}Training,a.png,0,0,0,0,0,8,2,0,0,0\n");
        let write_gz = |name: &str, text: &str| {
            let path = dir.path().join(name);
            let mut enc = flate2::write::GzEncoder::new(
                std::fs::File::create(&path).unwrap(),
                Default::default(),
            );
            enc.write_all(text.as_bytes()).unwrap();
            enc.finish().unwrap();
            path
        };
        let fer = write_gz("fer2013.csv.gz", &fer_text);
        let plus = write_gz("fer2013new.csv.gz", &plus_text);
        let (ds, load, report) = load_ferplus(
            &fer,
            &plus,
            &Fer2013Options::default(),
            &FerPlusOptions::default(),
        )
        .unwrap();
        assert_eq!(load.kept, 1);
        assert_eq!(report.kept, 1);
        assert_eq!(ds.labels(), &[1]); // disgust
        assert_eq!(ds.soft_target(0).unwrap()[..3], [0.0, 0.8, 0.2]);
    }
}
