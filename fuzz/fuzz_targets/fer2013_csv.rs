//! The FER2013 CSV reader, both error policies: any bytes give a dataset or
//! an error, never a panic or an unbounded allocation.
#![no_main]

use std::io::Cursor;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use training::data::{ErrorPolicy, Fer2013Options, read_fer2013};

fuzz_target!(|data: &[u8]| {
    for on_error in [ErrorPolicy::Fail, ErrorPolicy::Skip] {
        let opts = Fer2013Options::default().with_policy(on_error);
        let _ = read_fer2013(&mut Cursor::new(data), Path::new("fuzz.csv"), &opts);
    }
});
