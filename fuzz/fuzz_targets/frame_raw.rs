//! `Frame` construction from raw buffers (the pushed and custom sources):
//! arbitrary sizes, formats and byte counts, then crops and face crops at
//! arbitrary landmarks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perception::{Frame, PixelFormat};

fn u16_at(d: &[u8], i: usize) -> usize {
    usize::from(u16::from_le_bytes([d[i], d[i + 1]]))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 30 {
        return;
    }
    let (head, pixels) = data.split_at(30);
    let format = match head[0] % 3 {
        0 => PixelFormat::Gray8,
        1 => PixelFormat::Rgb8,
        _ => PixelFormat::Rgba8,
    };
    let (w, h) = (u16_at(head, 1), u16_at(head, 3));
    let Ok(frame) = Frame::new(w, h, format, pixels.to_vec()) else {
        return;
    };
    let _ = frame.crop(
        u16_at(head, 5),
        u16_at(head, 7),
        u16_at(head, 9),
        u16_at(head, 11),
    );
    let mut landmarks = [[0f32; 2]; 5];
    for (k, p) in landmarks.iter_mut().enumerate() {
        let at = 13 + 3 * k;
        p[0] = f32::from(head[at]) * 2.0 - 64.0 + f32::from(head[at + 2] & 7) * 1e6;
        p[1] = f32::from(head[at + 1]) * 2.0 - 64.0;
    }
    if head[28] == 0xff {
        landmarks[0][0] = f32::NAN;
    }
    let _ = perception::crop::face_crop(&frame, &landmarks);
});
