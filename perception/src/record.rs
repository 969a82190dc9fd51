//! Perception streams: what the face pipeline saw, frame by frame, as JSON
//! Lines (no pixels): a header line naming the format and the classifier's
//! classes, then one line per processed frame with its time, sequence number
//! and every face's box, landmarks, probabilities and quality. Written by
//! the plugin's recorder when the game switches it on, read back by its
//! replay source, which feeds the same tracker, calibration and events.
//!
//! ```text
//! {"format":"emotion-stream/1","classes":["angry",...,"neutral"]}
//! {"t":0.0,"seq":1,"faces":[{"bbox":[..],"score":0.99,"landmarks":[..],"probs":[..],"quality":{..}}]}
//! ```

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::track::Observation;

/// The format name of the header line.
pub const STREAM_FORMAT: &str = "emotion-stream/1";

/// Longest line the reader accepts (a frame with twenty faces is about 10
/// KiB): longer ones are reported, never read whole into memory.
pub const MAX_LINE: usize = 1 << 20;

/// The first line of a stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamHeader {
    /// [`STREAM_FORMAT`].
    pub format: String,
    /// The classifier's class names, in probability order.
    pub classes: Vec<String>,
}

/// One processed frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamFrame {
    /// Capture time, seconds from the start of the recording.
    pub t: f64,
    /// The frame's sequence number.
    pub seq: u64,
    /// The faces found.
    pub faces: Vec<Observation>,
}

/// A line of a stream that could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {reason}")]
pub struct StreamError {
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// Writes a stream: the header at creation, then one line per frame.
#[derive(Debug)]
pub struct StreamWriter<W: Write> {
    out: W,
}

impl<W: Write> StreamWriter<W> {
    /// Starts a stream for a classifier with `classes`.
    pub fn new(mut out: W, classes: &[String]) -> std::io::Result<Self> {
        let header = StreamHeader {
            format: STREAM_FORMAT.into(),
            classes: classes.to_vec(),
        };
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        Ok(Self { out })
    }

    /// Appends one frame.
    pub fn write_frame(&mut self, frame: &StreamFrame) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, frame)?;
        self.out.write_all(b"\n")
    }

    /// Flushes what was written.
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Reads a stream line by line. The header is read at creation; frames come
/// from [`StreamReader::next_frame`], each bad line as an error with its
/// number (the caller decides whether to skip it or stop).
#[derive(Debug)]
pub struct StreamReader<R: BufRead> {
    input: R,
    header: StreamHeader,
    line: usize,
    buf: Vec<u8>,
}

impl<R: BufRead> StreamReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, StreamError> {
        let mut buf = Vec::new();
        let header = match read_line(&mut input, &mut buf, 1)? {
            None => {
                return Err(StreamError {
                    line: 1,
                    reason: "empty stream (no header)".into(),
                });
            }
            Some(()) => serde_json::from_slice::<StreamHeader>(&buf).map_err(|e| StreamError {
                line: 1,
                reason: format!("not a stream header: {e}"),
            })?,
        };
        if header.format != STREAM_FORMAT {
            return Err(StreamError {
                line: 1,
                reason: format!("format `{}`, expected `{STREAM_FORMAT}`", header.format),
            });
        }
        Ok(Self {
            input,
            header,
            line: 1,
            buf,
        })
    }

    /// The header.
    pub fn header(&self) -> &StreamHeader {
        &self.header
    }

    /// The next frame: `None` at the end, `Some(Err)` for a line that is not
    /// a frame (garbage, truncated, too long, faces with the wrong number of
    /// probabilities); the reader stays usable after an error.
    pub fn next_frame(&mut self) -> Option<Result<StreamFrame, StreamError>> {
        loop {
            self.line += 1;
            let line = self.line;
            match read_line(&mut self.input, &mut self.buf, line) {
                Err(e) => return Some(Err(e)),
                Ok(None) => return None,
                Ok(Some(())) if self.buf.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(())) => {}
            }
            let k = self.header.classes.len();
            return Some(
                serde_json::from_slice::<StreamFrame>(&self.buf)
                    .map_err(|e| StreamError {
                        line,
                        reason: format!("not a frame: {e}"),
                    })
                    .and_then(|f| {
                        if let Some(bad) = f.faces.iter().find(|o| o.probs.len() != k) {
                            return Err(StreamError {
                                line,
                                reason: format!(
                                    "a face has {} probabilities for {k} classes",
                                    bad.probs.len()
                                ),
                            });
                        }
                        if !f.t.is_finite() {
                            return Err(StreamError {
                                line,
                                reason: "time is not a finite number".into(),
                            });
                        }
                        Ok(f)
                    }),
            );
        }
    }
}

/// Reads one line into `buf` (without its newline), at most [`MAX_LINE`]
/// bytes; a longer line is consumed and reported.
fn read_line(
    input: &mut impl BufRead,
    buf: &mut Vec<u8>,
    line: usize,
) -> Result<Option<()>, StreamError> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = input.fill_buf().map_err(|e| StreamError {
            line,
            reason: e.to_string(),
        })?;
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if buf.len() + part.len() > MAX_LINE {
            too_long = true;
        } else {
            buf.extend_from_slice(part);
        }
        let used = done.unwrap_or(chunk.len());
        input.consume(used);
        if done.is_some() {
            break;
        }
    }
    if too_long {
        return Err(StreamError {
            line,
            reason: format!("line longer than {MAX_LINE} bytes"),
        });
    }
    Ok(any.then_some(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["a", "b", "neutral"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn face(p: f32) -> Observation {
        Observation {
            bbox: [1.0, 2.0, 41.0, 52.0],
            score: 0.99,
            landmarks: [[10.0, 20.0]; 5],
            probs: vec![p, 1.0 - p, 0.0],
            quality: None,
            unsure: None,
        }
    }

    #[test]
    fn round_trip_and_bad_lines_are_reported_with_their_numbers() {
        let mut out = Vec::new();
        let mut w = StreamWriter::new(&mut out, &classes()).unwrap();
        for i in 0u32..3 {
            w.write_frame(&StreamFrame {
                t: f64::from(i) / 10.0,
                seq: u64::from(i) + 1,
                faces: vec![face(0.1 * i as f32)],
            })
            .unwrap();
        }
        let mut text = String::from_utf8(out).unwrap();
        let good = text.clone();
        let mut r = StreamReader::new(good.as_bytes()).unwrap();
        assert_eq!(r.header().classes, classes());
        let frames: Vec<StreamFrame> = std::iter::from_fn(|| r.next_frame())
            .map(Result::unwrap)
            .collect();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[2].faces[0], face(0.2));
        // Garbage, a wrong probability count and a truncated last line.
        text.insert_str(text.find('\n').unwrap() + 1, "garbage\n");
        text.push_str("{\"t\":1.0,\"seq\":9,\"faces\":[{\"bbox\":[0,0,1,1],\"score\":1,\"landmarks\":[[0,0],[0,0],[0,0],[0,0],[0,0]],\"probs\":[1.0]}]}\n");
        text.push_str("{\"t\":2.0,\"se");
        let mut r = StreamReader::new(text.as_bytes()).unwrap();
        let all: Vec<_> = std::iter::from_fn(|| r.next_frame()).collect();
        assert_eq!(all.len(), 6);
        assert_eq!(all[0].as_ref().unwrap_err().line, 2);
        assert!(all[1..4].iter().all(Result::is_ok));
        let wrong = all[4].as_ref().unwrap_err();
        assert!(
            wrong.line == 6 && wrong.reason.contains("1 probabilities"),
            "{wrong}"
        );
        assert_eq!(all[5].as_ref().unwrap_err().line, 7);
    }

    #[test]
    fn bad_headers_and_long_lines_are_errors() {
        assert_eq!(StreamReader::new(&b""[..]).unwrap_err().line, 1);
        assert!(StreamReader::new(&b"{\"format\":\"x/1\",\"classes\":[]}\n"[..]).is_err());
        assert!(StreamReader::new(&b"\xff\xfe garbage"[..]).is_err());
        let mut text = format!("{{\"format\":\"{STREAM_FORMAT}\",\"classes\":[\"a\"]}}\n");
        text.push_str(&"x".repeat(MAX_LINE + 10));
        text.push('\n');
        text.push_str("{\"t\":0.5,\"seq\":1,\"faces\":[]}\n");
        let mut r = StreamReader::new(text.as_bytes()).unwrap();
        let e = r.next_frame().unwrap().unwrap_err();
        assert!(e.reason.contains("longer than"), "{e}");
        assert_eq!(r.next_frame().unwrap().unwrap().seq, 1);
        assert!(r.next_frame().is_none());
    }
}
