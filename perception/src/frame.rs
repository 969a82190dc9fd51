//! Frames: 8-bit gray, RGB or RGBA images of any size, owned in memory.

use std::path::Path;

use crate::PerceptionError;

/// How a frame's bytes are laid out (row-major, interleaved, 8 bits per channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// One luma byte per pixel.
    Gray8,
    /// Red, green, blue.
    Rgb8,
    /// Red, green, blue, alpha (alpha is ignored).
    Rgba8,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            Self::Gray8 => 1,
            Self::Rgb8 => 3,
            Self::Rgba8 => 4,
        }
    }
}

/// The largest side a frame may have (larger ones are refused, not resized, so
/// a corrupt header cannot make us allocate gigabytes).
pub const MAX_FRAME_SIDE: usize = 16_384;

/// An image held in memory. Frames never touch the disk unless the caller writes
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    width: usize,
    height: usize,
    format: PixelFormat,
    data: Vec<u8>,
}

impl Frame {
    /// Wraps `data` (`width * height * channels` bytes). Empty frames, frames
    /// larger than [`MAX_FRAME_SIDE`] and a byte count that does not match are
    /// errors.
    pub fn new(
        width: usize,
        height: usize,
        format: PixelFormat,
        data: Vec<u8>,
    ) -> Result<Self, PerceptionError> {
        if width == 0 || height == 0 || width > MAX_FRAME_SIDE || height > MAX_FRAME_SIDE {
            return Err(PerceptionError::FrameSize { width, height });
        }
        let expected = width * height * format.channels();
        if data.len() != expected {
            return Err(PerceptionError::FrameBytes {
                expected,
                found: data.len(),
            });
        }
        Ok(Self {
            width,
            height,
            format,
            data,
        })
    }

    /// Converts a decoded image: gray stays gray, everything else becomes RGB
    /// (alpha dropped, 16-bit and float channels scaled to 8 bits).
    pub fn from_image(img: image::DynamicImage) -> Result<Self, PerceptionError> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        match img {
            image::DynamicImage::ImageLuma8(g) => Self::new(w, h, PixelFormat::Gray8, g.into_raw()),
            image::DynamicImage::ImageRgb8(c) => Self::new(w, h, PixelFormat::Rgb8, c.into_raw()),
            image::DynamicImage::ImageRgba8(c) => Self::new(w, h, PixelFormat::Rgba8, c.into_raw()),
            other => Self::new(w, h, PixelFormat::Rgb8, other.to_rgb8().into_raw()),
        }
    }

    /// Reads and decodes an image file (PNG or JPEG). Unreadable, truncated or
    /// unsupported files are errors naming the file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, PerceptionError> {
        let path = path.as_ref();
        let err = |reason: String| PerceptionError::Image {
            path: path.to_owned(),
            reason,
        };
        let reader = image::ImageReader::open(path)
            .map_err(|e| err(e.to_string()))?
            .with_guessed_format()
            .map_err(|e| err(e.to_string()))?;
        let mut reader = reader;
        reader.limits(image_limits());
        Self::from_image(reader.decode().map_err(|e| err(e.to_string()))?)
    }

    /// Decodes an image held in memory.
    pub fn decode(bytes: &[u8]) -> Result<Self, PerceptionError> {
        let err = |reason: String| PerceptionError::Image {
            path: "<memory>".into(),
            reason,
        };
        Self::from_image(decode_image(bytes).map_err(|e| err(e.to_string()))?)
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The pixel layout.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    /// The raw bytes.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Gives the bytes back.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// The `w x h` rectangle with its top-left corner at `(x, y)`, as a new
    /// frame of the same format. A rectangle that is empty or reaches
    /// beyond the frame is an error.
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Result<Frame, PerceptionError> {
        if w == 0 || h == 0 || x + w > self.width || y + h > self.height {
            return Err(PerceptionError::FrameSize {
                width: w,
                height: h,
            });
        }
        let ch = self.format.channels();
        let mut data = Vec::with_capacity(w * h * ch);
        for row in y..y + h {
            let start = (row * self.width + x) * ch;
            data.extend_from_slice(&self.data[start..start + w * ch]);
        }
        Frame::new(w, h, self.format, data)
    }

    /// The frame as 8-bit RGB (gray is replicated, alpha dropped).
    pub fn to_rgb8(&self) -> Vec<u8> {
        match self.format {
            PixelFormat::Rgb8 => self.data.clone(),
            PixelFormat::Gray8 => self.data.iter().flat_map(|&g| [g, g, g]).collect(),
            PixelFormat::Rgba8 => self
                .data
                .chunks_exact(4)
                .flat_map(|p| [p[0], p[1], p[2]])
                .collect(),
        }
    }

    /// The pixel at column `x`, row `y` as RGB (no bounds check beyond the slice's).
    #[inline]
    pub(crate) fn rgb_at(&self, x: usize, y: usize) -> [u8; 3] {
        let i = y * self.width + x;
        match self.format {
            PixelFormat::Gray8 => {
                let g = self.data[i];
                [g, g, g]
            }
            PixelFormat::Rgb8 => [self.data[3 * i], self.data[3 * i + 1], self.data[3 * i + 2]],
            PixelFormat::Rgba8 => [self.data[4 * i], self.data[4 * i + 1], self.data[4 * i + 2]],
        }
    }
}

/// Decodes image bytes (PNG, JPEG, or any format `image` guesses) with the
/// project's limits: sides up to [`MAX_FRAME_SIDE`] and at most 512 MiB
/// allocated, so a crafted header cannot make the decoder allocate gigabytes.
/// Every decoder of user files (frames, `predict`, the training folders) goes
/// through here.
pub fn decode_image(bytes: &[u8]) -> Result<image::DynamicImage, image::ImageError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    reader.limits(image_limits());
    reader.decode()
}

fn image_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_FRAME_SIDE as u32);
    limits.max_image_height = Some(MAX_FRAME_SIDE as u32);
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PNG whose header claims `w` x `h` pixels, with one tiny data chunk.
    fn png_claiming(w: u32, h: u32) -> Vec<u8> {
        fn crc(bytes: &[u8]) -> u32 {
            let mut c = 0xFFFF_FFFFu32;
            for &b in bytes {
                c ^= u32::from(b);
                for _ in 0..8 {
                    c = if c & 1 == 1 {
                        0xEDB8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            !c
        }
        fn chunk(out: &mut Vec<u8>, kind: &[u8], body: &[u8]) {
            out.extend((body.len() as u32).to_be_bytes());
            let start = out.len();
            out.extend(kind);
            out.extend(body);
            let c = crc(&out[start..]);
            out.extend(c.to_be_bytes());
        }
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend(w.to_be_bytes());
        ihdr.extend(h.to_be_bytes());
        ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(
            &mut out,
            b"IDAT",
            &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
        );
        chunk(&mut out, b"IEND", &[]);
        out
    }

    #[test]
    fn huge_image_headers_are_refused_without_allocating() {
        let err = decode_image(&png_claiming(60_000, 60_000)).unwrap_err();
        assert!(
            matches!(err, image::ImageError::Limits(_)),
            "expected a limits error, got {err}"
        );
        assert!(Frame::decode(&png_claiming(60_000, 60_000)).is_err());
        // The same file at a sane size gets past the header (then fails on
        // the short data, as it should).
        let err = decode_image(&png_claiming(64, 64)).unwrap_err();
        assert!(!matches!(err, image::ImageError::Limits(_)), "{err}");
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(
            Frame::new(0, 5, PixelFormat::Rgb8, vec![]),
            Err(PerceptionError::FrameSize { .. })
        ));
        assert!(matches!(
            Frame::new(2, 2, PixelFormat::Rgb8, vec![0; 11]),
            Err(PerceptionError::FrameBytes {
                expected: 12,
                found: 11
            })
        ));
        assert!(Frame::new(20_000, 1, PixelFormat::Gray8, vec![0; 20_000]).is_err());
        let f = Frame::new(2, 1, PixelFormat::Rgba8, vec![1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        assert_eq!(f.to_rgb8(), vec![1, 2, 3, 5, 6, 7]);
        assert_eq!(f.rgb_at(1, 0), [5, 6, 7]);
        let g = Frame::new(1, 1, PixelFormat::Gray8, vec![9]).unwrap();
        assert_eq!(g.to_rgb8(), vec![9, 9, 9]);
    }

    #[test]
    fn truncated_and_foreign_bytes_are_errors() {
        let mut png = Vec::new();
        image::DynamicImage::ImageRgb8(image::RgbImage::new(8, 8))
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        assert_eq!(Frame::decode(&png).unwrap().width(), 8);
        assert!(matches!(
            Frame::decode(&png[..png.len() / 2]),
            Err(PerceptionError::Image { .. })
        ));
        assert!(Frame::decode(b"hello").is_err());
        assert!(Frame::decode(&[]).is_err());
        assert!(Frame::open("/definitely/not/here.png").is_err());
    }
}
