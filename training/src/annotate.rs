//! Drawing boxes, landmarks and labels onto a copy of an image
//! (`training predict --annotate`), with a built-in 5x7 pixel font so no font
//! file is needed.

use image::{Rgb, RgbImage};

/// Rows of a 5x7 glyph, the high bit of each row's 5 bits is the left pixel.
fn glyph(c: char) -> [u8; 7] {
    match c {
        'a' => [0, 0, 0b01110, 0b00001, 0b01111, 0b10001, 0b01111],
        'b' => [
            0b10000, 0b10000, 0b11110, 0b10001, 0b10001, 0b10001, 0b11110,
        ],
        'c' => [0, 0, 0b01110, 0b10000, 0b10000, 0b10001, 0b01110],
        'd' => [
            0b00001, 0b00001, 0b01111, 0b10001, 0b10001, 0b10001, 0b01111,
        ],
        'e' => [0, 0, 0b01110, 0b10001, 0b11111, 0b10000, 0b01110],
        'f' => [
            0b00110, 0b01001, 0b01000, 0b11100, 0b01000, 0b01000, 0b01000,
        ],
        'g' => [0, 0b01111, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        'h' => [
            0b10000, 0b10000, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001,
        ],
        'i' => [0b00100, 0, 0b01100, 0b00100, 0b00100, 0b00100, 0b01110],
        'l' => [
            0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        'm' => [0, 0, 0b11010, 0b10101, 0b10101, 0b10001, 0b10001],
        'n' => [0, 0, 0b10110, 0b11001, 0b10001, 0b10001, 0b10001],
        'o' => [0, 0, 0b01110, 0b10001, 0b10001, 0b10001, 0b01110],
        'p' => [0, 0, 0b11110, 0b10001, 0b11110, 0b10000, 0b10000],
        'r' => [0, 0, 0b10110, 0b11001, 0b10000, 0b10000, 0b10000],
        's' => [0, 0, 0b01110, 0b10000, 0b01110, 0b00001, 0b11110],
        't' => [
            0b01000, 0b01000, 0b11100, 0b01000, 0b01000, 0b01001, 0b00110,
        ],
        'u' => [0, 0, 0b10001, 0b10001, 0b10001, 0b10011, 0b01101],
        'y' => [0, 0, 0b10001, 0b10001, 0b01111, 0b00001, 0b01110],
        '0' => [
            0b01110, 0b10001, 0b10011, 0b10101, 0b11001, 0b10001, 0b01110,
        ],
        '1' => [
            0b00100, 0b01100, 0b00100, 0b00100, 0b00100, 0b00100, 0b01110,
        ],
        '2' => [
            0b01110, 0b10001, 0b00001, 0b00010, 0b00100, 0b01000, 0b11111,
        ],
        '3' => [
            0b11111, 0b00010, 0b00100, 0b00010, 0b00001, 0b10001, 0b01110,
        ],
        '4' => [
            0b00010, 0b00110, 0b01010, 0b10010, 0b11111, 0b00010, 0b00010,
        ],
        '5' => [
            0b11111, 0b10000, 0b11110, 0b00001, 0b00001, 0b10001, 0b01110,
        ],
        '6' => [
            0b00110, 0b01000, 0b10000, 0b11110, 0b10001, 0b10001, 0b01110,
        ],
        '7' => [
            0b11111, 0b00001, 0b00010, 0b00100, 0b01000, 0b01000, 0b01000,
        ],
        '8' => [
            0b01110, 0b10001, 0b10001, 0b01110, 0b10001, 0b10001, 0b01110,
        ],
        '9' => [
            0b01110, 0b10001, 0b10001, 0b01111, 0b00001, 0b00010, 0b01100,
        ],
        '.' => [0, 0, 0, 0, 0, 0b01100, 0b01100],
        ' ' => [0; 7],
        // Anything else: a hollow box.
        _ => [
            0b11111, 0b10001, 0b10001, 0b10001, 0b10001, 0b10001, 0b11111,
        ],
    }
}

/// One colour per FER2013 class (angry, disgust, fear, happy, sad, surprise,
/// neutral), cycled for other class lists.
pub fn class_colour(class: usize) -> Rgb<u8> {
    const C: [[u8; 3]; 7] = [
        [230, 40, 40],
        [120, 170, 30],
        [150, 60, 200],
        [250, 200, 0],
        [40, 110, 230],
        [250, 120, 20],
        [200, 200, 200],
    ];
    Rgb(C[class % C.len()])
}

fn put(img: &mut RgbImage, x: i64, y: i64, c: Rgb<u8>) {
    if x >= 0 && y >= 0 && x < i64::from(img.width()) && y < i64::from(img.height()) {
        img.put_pixel(x as u32, y as u32, c);
    }
}

fn fill(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    for y in y0.max(0)..y1.min(i64::from(img.height())) {
        for x in x0.max(0)..x1.min(i64::from(img.width())) {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

/// Draws `text` with its top-left corner at `(x, y)`, each font pixel `scale`
/// image pixels, on a black band.
pub fn text(img: &mut RgbImage, x: i64, y: i64, scale: i64, text: &str, c: Rgb<u8>) {
    let n = text.chars().count() as i64;
    fill(
        img,
        x,
        y,
        x + n * 6 * scale + scale,
        y + 9 * scale,
        Rgb([0, 0, 0]),
    );
    for (i, ch) in text.chars().enumerate() {
        let rows = glyph(ch.to_ascii_lowercase());
        for (r, bits) in rows.iter().enumerate() {
            for col in 0..5 {
                if bits & (0b10000 >> col) != 0 {
                    let px = x + scale + (i as i64 * 6 + col) * scale;
                    let py = y + scale + r as i64 * scale;
                    fill(img, px, py, px + scale, py + scale, c);
                }
            }
        }
    }
}

/// Draws a face: its box (`[x1, y1, x2, y2]`), landmarks and a label above it.
pub fn face(
    img: &mut RgbImage,
    bbox: [f32; 4],
    landmarks: &[[f32; 2]; 5],
    label: &str,
    c: Rgb<u8>,
) {
    let [x1, y1, x2, y2] = bbox.map(|v| v.round() as i64);
    let t = (((x2 - x1).max(y2 - y1)) / 80).clamp(1, 6);
    fill(img, x1 - t, y1 - t, x2 + t, y1, c);
    fill(img, x1 - t, y2, x2 + t, y2 + t, c);
    fill(img, x1 - t, y1, x1, y2, c);
    fill(img, x2, y1, x2 + t, y2, c);
    for [lx, ly] in landmarks {
        let (lx, ly) = (lx.round() as i64, ly.round() as i64);
        for dy in -t..=t {
            for dx in -t..=t {
                put(img, lx + dx, ly + dy, Rgb([0, 255, 0]));
            }
        }
    }
    let scale = ((x2 - x1) / 70).clamp(1, 4);
    let y = (y1 - t - 9 * scale).max(0);
    text(img, x1 - t, y, scale, label, c);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drawing_stays_inside_the_image() {
        let mut img = RgbImage::new(40, 30);
        face(
            &mut img,
            [-10.0, -5.0, 60.0, 70.0],
            &[
                [1.0, 1.0],
                [100.0, 1.0],
                [-3.0, 5.0],
                [5.0, 50.0],
                [39.0, 29.0],
            ],
            "happy 0.93",
            class_colour(3),
        );
        assert!(img.pixels().any(|p| p.0 == [250, 200, 0]));
        // Text draws glyph pixels on its band.
        let mut img = RgbImage::new(100, 20);
        text(&mut img, 0, 0, 1, "sad 1", Rgb([255, 255, 255]));
        let lit = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        assert!(lit > 20, "{lit}");
    }
}
