//! The replay stream reader (`SourceKind::Replay`, JSON Lines): the header
//! and every frame line.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use perception::record::StreamReader;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut reader) = StreamReader::new(Cursor::new(data)) {
        let mut n = 0;
        while let Some(frame) = reader.next_frame() {
            let _ = frame;
            n += 1;
            if n > 10_000 {
                break;
            }
        }
    }
});
