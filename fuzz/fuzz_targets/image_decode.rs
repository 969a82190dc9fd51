//! Image decoding as `predict`, the folders and the plugin do it (with the
//! size limits), then the crops the pipeline takes of a decoded frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perception::Frame;

fuzz_target!(|data: &[u8]| {
    let _ = perception::frame::decode_image(data);
    if let Ok(frame) = Frame::decode(data) {
        let _ = frame.to_rgb8();
        let _ = frame.crop(0, 0, frame.width().min(48), frame.height().min(48));
    }
});
