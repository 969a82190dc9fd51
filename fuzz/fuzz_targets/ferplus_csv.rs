//! The FER+ vote reader, both error policies.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use training::data::{ErrorPolicy, read_ferplus_votes};

fuzz_target!(|data: &[u8]| {
    for on_error in [ErrorPolicy::Fail, ErrorPolicy::Skip] {
        let _ = read_ferplus_votes(&mut Cursor::new(data), Path::new("fuzz.csv"), on_error);
    }
});
