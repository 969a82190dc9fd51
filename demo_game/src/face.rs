//! Ada's face as geometry, with no Bevy in it: FACS action-unit intensities
//! (and gaze, blink, speech) in, one list of coloured triangles out, drawn
//! back to front.
//!
//! Every feature is a smooth shape computed from the action units that move
//! it (Ekman and Friesen's FACS): the brows from AU1 (inner raiser), AU2
//! (outer raiser) and AU4 (lowerer); the lids from AU5 (upper lid raiser),
//! AU6 (cheek raiser), AU7 (lid tightener) and AU45 (blink); the nose from
//! AU9 (wrinkler); the lips from AU10 (upper lip raiser), AU12 (corner
//! puller), AU15 (corner depressor), AU16 (lower lip depressor), AU17 (chin
//! raiser), AU18 (pucker), AU20 (stretcher), AU23 (tightener), AU25 (lips
//! part) and AU26 (jaw drop). Regions are ribbons between two curves sampled
//! at the same parameters (lids, lips, brows) or fans around a centre
//! (head, irises), so every shape stays continuous whatever the intensities.
//!
//! Face space: x to Ada's left on screen, y up, the face about 2 units wide;
//! the eyes on y = 0.18, the mouth corners near y = -0.58.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The action units Ada's face can show.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub enum Au {
    /// Inner brow raiser.
    Au1,
    /// Outer brow raiser.
    Au2,
    /// Brow lowerer.
    Au4,
    /// Upper lid raiser.
    Au5,
    /// Cheek raiser.
    Au6,
    /// Lid tightener.
    Au7,
    /// Nose wrinkler.
    Au9,
    /// Upper lip raiser.
    Au10,
    /// Lip corner puller.
    Au12,
    /// Lip corner depressor.
    Au15,
    /// Lower lip depressor.
    Au16,
    /// Chin raiser.
    Au17,
    /// Lip pucker.
    Au18,
    /// Lip stretcher.
    Au20,
    /// Lip tightener.
    Au23,
    /// Lips part.
    Au25,
    /// Jaw drop.
    Au26,
    /// Blink.
    Au45,
}

impl Au {
    /// Every unit, in FACS order.
    pub const ALL: [Au; 18] = [
        Au::Au1,
        Au::Au2,
        Au::Au4,
        Au::Au5,
        Au::Au6,
        Au::Au7,
        Au::Au9,
        Au::Au10,
        Au::Au12,
        Au::Au15,
        Au::Au16,
        Au::Au17,
        Au::Au18,
        Au::Au20,
        Au::Au23,
        Au::Au25,
        Au::Au26,
        Au::Au45,
    ];

    /// `AU12` etc.
    pub fn name(self) -> &'static str {
        [
            "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU10", "AU12", "AU15", "AU16",
            "AU17", "AU18", "AU20", "AU23", "AU25", "AU26", "AU45",
        ][self as usize]
    }
}

impl TryFrom<String> for Au {
    type Error = String;

    /// `"AU12"` to [`Au::Au12`].
    fn try_from(name: String) -> Result<Self, String> {
        Au::ALL
            .into_iter()
            .find(|u| u.name() == name)
            .ok_or_else(|| format!("`{name}` is not one of Ada's action units (AU1 ... AU45)"))
    }
}

/// Intensities of every action unit, each 0 (absent) to 1 (maximum, FACS
/// intensity E).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ActionUnits(pub [f32; Au::ALL.len()]);

impl ActionUnits {
    /// Intensity of `au`.
    pub fn get(&self, au: Au) -> f32 {
        self.0[au as usize]
    }

    /// Sets `au` (clamped to 0..1).
    pub fn set(&mut self, au: Au, v: f32) {
        self.0[au as usize] = v.clamp(0.0, 1.0);
    }

    /// A recipe at `intensity` (0..1).
    pub fn from_recipe(recipe: &BTreeMap<Au, f32>, intensity: f32) -> Self {
        let mut out = Self::default();
        for (&au, &v) in recipe {
            out.set(au, v * intensity);
        }
        out
    }

    /// `self + (other - self) * t`, unit by unit.
    pub fn lerp(&self, other: &Self, t: f32) -> Self {
        let mut out = *self;
        for (o, b) in out.0.iter_mut().zip(other.0) {
            *o += (b - *o) * t;
        }
        out
    }
}

/// Everything the face shows at one instant besides the action units.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Pose {
    /// Where the eyes look, -1..1 (x to the viewer's right, y up).
    pub gaze: [f32; 2],
    /// Head turn, -1..1 (features shift with parallax; 1 is about 25°).
    pub yaw: f32,
    /// Head nod, -1..1 (down is negative).
    pub pitch: f32,
}

/// A point in face space.
pub type P = [f32; 2];

/// Colours as linear RGBA.
pub type Rgba = [f32; 4];

/// One draw list: triangles in painter's order (later ones on top).
#[derive(Debug, Default, Clone)]
pub struct Triangles {
    /// Vertex positions.
    pub positions: Vec<P>,
    /// Vertex colours.
    pub colours: Vec<Rgba>,
}

impl Triangles {
    fn tri(&mut self, a: P, b: P, c: P, ca: Rgba, cb: Rgba, cc: Rgba) {
        self.positions.extend([a, b, c]);
        self.colours.extend([ca, cb, cc]);
    }

    /// The region between curves `a` and `b` (same number of points): a
    /// ribbon of quads; `ca` on `a`'s side, `cb` on `b`'s.
    pub fn ribbon(&mut self, a: &[P], b: &[P], ca: Rgba, cb: Rgba) {
        for i in 1..a.len().min(b.len()) {
            self.tri(a[i - 1], a[i], b[i], ca, ca, cb);
            self.tri(a[i - 1], b[i], b[i - 1], ca, cb, cb);
        }
    }

    /// A closed outline filled from `centre` (the outline must be
    /// star-shaped around it), `inner` at the centre, `outer` at the rim.
    pub fn fan(&mut self, centre: P, outline: &[P], inner: Rgba, outer: Rgba) {
        for i in 0..outline.len() {
            let j = (i + 1) % outline.len();
            self.tri(centre, outline[i], outline[j], inner, outer, outer);
        }
    }

    /// A stroke of `width` along `line`, fading to `width * taper` at the end.
    pub fn stroke(&mut self, line: &[P], width: f32, taper: f32, colour: Rgba) {
        let n = line.len();
        if n < 2 {
            return;
        }
        let (mut left, mut right) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..n {
            let a = line[i.saturating_sub(1)];
            let b = line[(i + 1).min(n - 1)];
            let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
            let len = (dx * dx + dy * dy).sqrt().max(1e-6);
            let t = i as f32 / (n - 1) as f32;
            let w = width * 0.5 * (1.0 + (taper - 1.0) * t);
            let (nx, ny) = (-dy / len * w, dx / len * w);
            left.push([line[i][0] + nx, line[i][1] + ny]);
            right.push([line[i][0] - nx, line[i][1] - ny]);
        }
        self.ribbon(&left, &right, colour, colour);
    }

    /// An ellipse.
    pub fn ellipse(&mut self, c: P, r: [f32; 2], inner: Rgba, outer: Rgba) {
        let outline: Vec<P> = (0..32)
            .map(|k| {
                let a = k as f32 / 32.0 * std::f32::consts::TAU;
                [c[0] + r[0] * a.cos(), c[1] + r[1] * a.sin()]
            })
            .collect();
        self.fan(c, &outline, inner, outer);
    }
}

/// sRGB bytes to linear RGBA with `alpha`.
pub fn rgb(r: u8, g: u8, b: u8, alpha: f32) -> Rgba {
    let lin = |c: u8| {
        let c = f32::from(c) / 255.0;
        if c <= 0.04045 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    [lin(r), lin(g), lin(b), alpha]
}

fn with_alpha(c: Rgba, a: f32) -> Rgba {
    [c[0], c[1], c[2], c[3] * a.clamp(0.0, 1.0)]
}

/// Samples `f(t)` for `n` values of t in 0..=1.
fn curve(n: usize, f: impl Fn(f32) -> P) -> Vec<P> {
    (0..n).map(|i| f(i as f32 / (n - 1) as f32)).collect()
}

/// The palette.
struct Palette {
    skin: Rgba,
    skin_edge: Rgba,
    shadow: Rgba,
    lid: Rgba,
    hair: Rgba,
    sclera: Rgba,
    iris: Rgba,
    pupil: Rgba,
    lip: Rgba,
    lip_dark: Rgba,
    mouth: Rgba,
    teeth: Rgba,
    brow: Rgba,
    blush: Rgba,
    shirt: Rgba,
}

impl Palette {
    fn new() -> Self {
        Self {
            skin: rgb(236, 194, 165, 1.0),
            skin_edge: rgb(196, 146, 116, 1.0),
            shadow: rgb(150, 95, 75, 1.0),
            lid: rgb(214, 166, 138, 1.0),
            hair: rgb(58, 36, 28, 1.0),
            sclera: rgb(244, 240, 236, 1.0),
            iris: rgb(70, 98, 128, 1.0),
            pupil: rgb(18, 14, 14, 1.0),
            lip: rgb(186, 92, 90, 1.0),
            lip_dark: rgb(150, 66, 68, 1.0),
            mouth: rgb(70, 22, 28, 1.0),
            teeth: rgb(240, 236, 226, 1.0),
            brow: rgb(66, 42, 32, 1.0),
            blush: rgb(226, 128, 118, 1.0),
            shirt: rgb(52, 104, 140, 1.0),
        }
    }
}

/// The whole face: action units and pose to triangles.
pub fn draw(au: &ActionUnits, pose: &Pose) -> Triangles {
    let pal = Palette::new();
    let mut t = Triangles::default();
    let a = |u: Au| au.get(u);
    // Parallax: inner features move with the head turn more than the outline.
    let shift = |depth: f32| [pose.yaw * 0.12 * depth, pose.pitch * 0.08 * depth];
    let at = |p: P, depth: f32| {
        let s = shift(depth);
        [p[0] + s[0], p[1] + s[1]]
    };
    let jaw = 0.24 * a(Au::Au26) + 0.03 * a(Au::Au25);

    // Shoulders, neck.
    let shoulders: Vec<P> = curve(24, |u| {
        let x = -2.2 + 4.4 * u;
        [x, -2.05 - 0.35 * (x / 2.2).powi(2) + 0.35]
    });
    let bottom: Vec<P> = shoulders.iter().map(|p| [p[0], -3.2]).collect();
    t.ribbon(&shoulders, &bottom, pal.shirt, pal.shirt);
    let neck_top: Vec<P> = curve(8, |u| [-0.42 + 0.84 * u, -1.1]);
    let neck_bottom: Vec<P> = curve(8, |u| [-0.5 + 1.0 * u, -1.95]);
    t.ribbon(&neck_top, &neck_bottom, pal.shadow, pal.skin_edge);

    // Hair behind the head.
    t.ellipse([0.0, 0.28], [1.16, 1.4], pal.hair, pal.hair);
    let back_left: Vec<P> = curve(10, |u| [-1.16 + 0.05 * u, 0.28 - 1.3 * u]);
    let back_right: Vec<P> = curve(10, |u| [-0.7, 0.28 - 1.1 * u]);
    t.ribbon(&back_left, &back_right, pal.hair, pal.hair);
    let back_left: Vec<P> = back_left.iter().map(|p| [-p[0], p[1]]).collect();
    let back_right: Vec<P> = back_right.iter().map(|p| [-p[0], p[1]]).collect();
    t.ribbon(&back_left, &back_right, pal.hair, pal.hair);

    // Ears.
    for side in [-1.0f32, 1.0] {
        t.ellipse([side * 0.98, 0.02], [0.12, 0.22], pal.skin, pal.skin_edge);
    }

    // The head: rounder on top, a narrower chin that drops with the jaw.
    let outline: Vec<P> = (0..72)
        .map(|k| {
            let th = k as f32 / 72.0 * std::f32::consts::TAU;
            let (c, s) = (th.cos(), th.sin());
            if s >= 0.0 {
                [0.98 * c, 0.15 + 1.2 * s]
            } else {
                let narrow = 1.0 - 0.3 * s * s;
                [0.98 * c * narrow, 0.15 + (1.5 + jaw) * s]
            }
        })
        .collect();
    t.fan(at([0.0, 0.0], 0.3), &outline, pal.skin, pal.skin_edge);

    // Cheeks (raised by AU6 and the smile).
    let lift = 0.06 * a(Au::Au6) + 0.03 * a(Au::Au12);
    for side in [-1.0f32, 1.0] {
        t.ellipse(
            at([side * 0.52, -0.22 + lift], 0.6),
            [0.22, 0.14],
            with_alpha(pal.blush, 0.18 + 0.25 * a(Au::Au6)),
            with_alpha(pal.blush, 0.0),
        );
    }

    // Forehead lines: horizontal with the brows raised, vertical between
    // the brows when they are lowered.
    let raise = (a(Au::Au1) + a(Au::Au2)) * 0.5;
    for k in 0..3 {
        let y = 0.72 + 0.09 * k as f32;
        let line: Vec<P> = curve(12, |u| {
            let x = -0.42 + 0.84 * u;
            at([x, y + 0.03 * (1.0 - (x / 0.42).powi(2))], 0.5)
        });
        t.stroke(&line, 0.018, 0.6, with_alpha(pal.shadow, 0.45 * raise));
    }
    for side in [-1.0f32, 1.0] {
        let line: Vec<P> = curve(6, |u| at([side * (0.06 + 0.01 * u), 0.5 - 0.14 * u], 0.7));
        t.stroke(&line, 0.02, 0.5, with_alpha(pal.shadow, 0.55 * a(Au::Au4)));
    }

    // Nasolabial folds, deeper with AU6, AU10, AU12 and AU9.
    let corner = mouth_corner(au);
    let fold =
        (0.2 + 0.45 * a(Au::Au12) + 0.35 * a(Au::Au6) + 0.4 * a(Au::Au10) + 0.3 * a(Au::Au9))
            .min(1.0);
    for side in [-1.0f32, 1.0] {
        let top = [side * 0.2, -0.24 + 0.04 * a(Au::Au9)];
        let end = [side * (corner[0] + 0.1), corner[1] - 0.1];
        let line: Vec<P> = curve(12, |u| {
            let x = top[0] + (end[0] - top[0]) * u + side * 0.08 * (u * std::f32::consts::PI).sin();
            at([x, top[1] + (end[1] - top[1]) * u], 0.8)
        });
        t.stroke(&line, 0.03, 0.3, with_alpha(pal.shadow, 0.35 * fold));
    }

    // Nose: bridge shading, the tip's shadow, nostrils (raised by AU9) and
    // the wrinkles of AU9 across the bridge.
    let nose_up = 0.04 * a(Au::Au9) + 0.015 * a(Au::Au10);
    for side in [-1.0f32, 1.0] {
        let bridge: Vec<P> = curve(8, |u| at([side * (0.09 + 0.03 * u), 0.2 - 0.38 * u], 0.9));
        t.stroke(&bridge, 0.03, 0.6, with_alpha(pal.skin_edge, 0.5));
        let wing: Vec<P> = curve(10, |u| {
            let th = std::f32::consts::PI * (0.1 + 0.8 * u);
            at(
                [
                    side * (0.1 + 0.08 * th.sin()),
                    -0.24 + nose_up - 0.07 * th.cos(),
                ],
                1.0,
            )
        });
        t.stroke(&wing, 0.028, 0.5, with_alpha(pal.shadow, 0.6));
        t.ellipse(
            at([side * 0.065, -0.3 + nose_up], 1.0),
            [0.045, 0.022],
            with_alpha(pal.shadow, 0.9),
            with_alpha(pal.shadow, 0.5),
        );
    }
    t.ellipse(
        at([0.0, -0.26 + nose_up], 1.0),
        [0.12, 0.05],
        with_alpha(pal.skin_edge, 0.35),
        with_alpha(pal.skin_edge, 0.0),
    );
    for k in 0..3 {
        let y = 0.1 - 0.05 * k as f32;
        let line: Vec<P> = curve(6, |u| {
            at([-0.09 + 0.18 * u, y + 0.01 * (u * 3.1).sin()], 0.9)
        });
        t.stroke(&line, 0.014, 1.0, with_alpha(pal.shadow, 0.6 * a(Au::Au9)));
    }

    // Eyes.
    for side in [-1.0f32, 1.0] {
        eye(&mut t, &pal, au, pose, side, &at);
    }

    // Brows.
    for side in [-1.0f32, 1.0] {
        // AU4 with AU1 draws the brows together without pulling the inner
        // ends down: the oblique brow of sadness and fear.
        let inner_up =
            0.14 * a(Au::Au1) - 0.1 * a(Au::Au4) * (1.0 - 0.8 * a(Au::Au1)) - 0.03 * a(Au::Au9);
        let outer_up = 0.13 * a(Au::Au2) - 0.03 * a(Au::Au4) + 0.02 * a(Au::Au1);
        let inner_x = 0.15 - 0.05 * a(Au::Au4);
        let line: Vec<P> = curve(14, |u| {
            let x = inner_x + (0.62 - inner_x) * u;
            let arch = 0.06 * (u * std::f32::consts::PI).sin();
            let y = 0.42 + arch + inner_up * (1.0 - u) + outer_up * u
                // AU1 without AU2 lifts the inner half: the sad, oblique brow.
                + 0.05 * a(Au::Au1) * (1.0 - u) * (1.0 - a(Au::Au2));
            at([side * x, y], 0.7)
        });
        t.stroke(&line, 0.075, 0.45, pal.brow);
    }

    mouth(&mut t, &pal, au, &at);

    // The chin boss pushed up by AU17.
    let chin_y = -1.3 - jaw * 0.9;
    let chin: Vec<P> = curve(10, |u| {
        let x = -0.16 + 0.32 * u;
        at([x, chin_y + 0.18 + 0.05 * (1.0 - (x / 0.16).powi(2))], 0.6)
    });
    t.stroke(
        &chin,
        0.025,
        1.0,
        with_alpha(pal.shadow, 0.15 + 0.4 * a(Au::Au17)),
    );

    // Fringe over the forehead.
    let hairline: Vec<P> = curve(24, |u| {
        let x = -1.0 + 2.0 * u;
        [
            x,
            0.98 - 0.22 * x * x + 0.08 * (x * 5.0).sin() * (1.0 - x * x),
        ]
    });
    let crown: Vec<P> = hairline
        .iter()
        .map(|p| {
            [
                p[0] * 1.08,
                0.15 + 1.25 * (1.0 - (p[0] / 1.08).powi(2)).max(0.0).sqrt(),
            ]
        })
        .collect();
    t.ribbon(&hairline, &crown, pal.hair, pal.hair);
    t
}

/// Where the right-hand mouth corner is (the left mirrors it).
pub fn mouth_corner(au: &ActionUnits) -> P {
    let a = |u: Au| au.get(u);
    [
        0.27 + 0.1 * a(Au::Au12) + 0.1 * a(Au::Au20) - 0.07 * a(Au::Au23) - 0.1 * a(Au::Au18)
            + 0.02 * a(Au::Au15),
        -0.6 + 0.15 * a(Au::Au12) - 0.1 * a(Au::Au15) + 0.02 * a(Au::Au10) - 0.02 * a(Au::Au20)
            + 0.03 * a(Au::Au6),
    ]
}

/// How far apart the lips are at the centre.
pub fn mouth_gap(au: &ActionUnits) -> f32 {
    let a = |u: Au| au.get(u);
    (0.035 * a(Au::Au25) + 0.3 * a(Au::Au26) + 0.05 * a(Au::Au10) * a(Au::Au25)
        - 0.02 * a(Au::Au23))
    .max(0.0)
}

fn eye(
    t: &mut Triangles,
    pal: &Palette,
    au: &ActionUnits,
    pose: &Pose,
    side: f32,
    at: &dyn Fn(P, f32) -> P,
) {
    let a = |u: Au| au.get(u);
    let (cx, cy, w) = (side * 0.38, 0.18, 0.2);
    // Lid heights over and under the eye's centre line.
    let lower = 0.065 - 0.03 * a(Au::Au7) - 0.035 * a(Au::Au6);
    let open = 0.085 + 0.065 * a(Au::Au5)
        - 0.03 * a(Au::Au7)
        - 0.02 * a(Au::Au6)
        - 0.02 * a(Au::Au4)
        - 0.01 * a(Au::Au9);
    let blink = a(Au::Au45);
    let upper = open * (1.0 - blink) - lower * blink;
    let n = 17;
    // The lid lines: height over (under) the centre line at `x` (face
    // space), corner to corner, the outer corner a little higher.
    let lid_at = move |x: f32, h: f32, power: f32| {
        let u = (x - cx) / w;
        let bulge = (1.0 - u * u).max(0.0).powf(power);
        cy + h * bulge + 0.015 * u * side
    };
    let up: Vec<P> = curve(n, |u| {
        let x = cx + w * (-1.0 + 2.0 * u);
        [x, lid_at(x, upper, 0.8)]
    });
    let down: Vec<P> = curve(n, |u| {
        let x = cx + w * (-1.0 + 2.0 * u);
        [x, lid_at(x, -lower, 0.9)]
    });
    let up_s: Vec<P> = up.iter().map(|&p| at(p, 0.8)).collect();
    let down_s: Vec<P> = down.iter().map(|&p| at(p, 0.8)).collect();
    // Socket shading, then the white between the lids.
    t.ellipse(
        at([cx, cy + 0.03], 0.7),
        [0.27, 0.17],
        with_alpha(pal.lid, 0.45),
        with_alpha(pal.lid, 0.0),
    );
    t.ribbon(&up_s, &down_s, pal.sclera, pal.sclera);
    // Iris, pupil and highlight where the gaze points, clipped to the
    // opening between the lids (a disc cut by the two lid curves).
    let g = [pose.gaze[0] * 0.07, pose.gaze[1] * 0.035];
    let (ix, iy) = (cx + g[0], cy + g[1] - 0.005);
    let disc = |r: f32, colour: Rgba, c: P, t: &mut Triangles| {
        let k = 13;
        let (mut top, mut bottom) = (Vec::with_capacity(k), Vec::with_capacity(k));
        for j in 0..k {
            let x = c[0] - r + 2.0 * r * j as f32 / (k - 1) as f32;
            let half = (r * r - (x - c[0]).powi(2)).max(0.0).sqrt();
            let hi = (c[1] + half).min(lid_at(x, upper, 0.8));
            let lo = (c[1] - half).max(lid_at(x, -lower, 0.9));
            let lo = lo.min(hi);
            top.push(at([x, hi], 0.8));
            bottom.push(at([x, lo], 0.8));
        }
        t.ribbon(&top, &bottom, colour, colour);
    };
    disc(0.085, pal.iris, [ix, iy], t);
    disc(0.06, with_alpha(pal.pupil, 0.25), [ix, iy], t);
    disc(0.038, pal.pupil, [ix, iy], t);
    disc(0.016, rgb(255, 255, 255, 0.9), [ix + 0.025, iy + 0.03], t);
    // Lids: skin shading from the lid line fading out above and below.
    let over: Vec<P> = up
        .iter()
        .map(|p| at([p[0], p[1] + 0.06 + 0.02 * a(Au::Au5)], 0.8))
        .collect();
    let under: Vec<P> = down.iter().map(|p| at([p[0], p[1] - 0.05], 0.8)).collect();
    t.ribbon(
        &up_s,
        &over,
        with_alpha(pal.lid, 0.9),
        with_alpha(pal.lid, 0.0),
    );
    t.ribbon(
        &down_s,
        &under,
        with_alpha(pal.lid, 0.6),
        with_alpha(pal.lid, 0.0),
    );
    // Lash line and the crease above it.
    t.stroke(&up_s, 0.026, 0.6, pal.pupil);
    t.stroke(&down_s, 0.01, 0.6, with_alpha(pal.shadow, 0.6));
    let crease: Vec<P> = up
        .iter()
        .map(|p| at([p[0], p[1] + 0.05 + 0.02 * (1.0 - blink)], 0.8))
        .collect();
    t.stroke(
        &crease,
        0.012,
        0.4,
        with_alpha(pal.shadow, 0.45 * (1.0 - a(Au::Au5))),
    );
}

fn mouth(t: &mut Triangles, pal: &Palette, au: &ActionUnits, at: &dyn Fn(P, f32) -> P) {
    let a = |u: Au| au.get(u);
    let corner = mouth_corner(au);
    let gap = mouth_gap(au);
    // The lips' mid line (y at the centre) sits between the corners' rest
    // height and the jaw's pull.
    let mid = -0.6 + 0.015 * a(Au::Au10) - 0.02 * a(Au::Au16) + 0.02 * a(Au::Au17);
    let upper_thick = 0.055 - 0.03 * a(Au::Au23) + 0.02 * a(Au::Au18) - 0.015 * a(Au::Au12);
    let lower_thick =
        0.07 - 0.035 * a(Au::Au23) + 0.025 * a(Au::Au18) - 0.015 * a(Au::Au12) + 0.02 * a(Au::Au16);
    let inner_up = mid + gap * 0.35 + 0.035 * a(Au::Au10);
    let inner_down = mid - gap * 0.65 - 0.05 * a(Au::Au16);
    let n = 25;
    // Each line runs corner to corner; `y(x)` blends from the corner height
    // at |x| = 1 to the centre value with the shape's own curvature.
    let line = |centre: f32, power: f32, bow: f32| {
        curve(n, move |u| {
            let x = -1.0 + 2.0 * u;
            let f = (1.0 - x * x).max(0.0).powf(power);
            let cupid = bow * (-(x / 0.18).powi(2)).exp();
            at(
                [corner[0] * x, corner[1] + (centre - corner[1]) * f - cupid],
                1.0,
            )
        })
    };
    let outer_top = line(inner_up + upper_thick + 0.015 * a(Au::Au10), 0.55, 0.018);
    let inner_top = line(inner_up, 0.9, 0.0);
    let inner_bottom = line(inner_down, 0.9, 0.0);
    let outer_bottom = line(inner_down - lower_thick, 0.5, 0.0);
    // The opening, its teeth, then the lips.
    t.ribbon(&inner_top, &inner_bottom, pal.mouth, pal.mouth);
    if gap > 0.01 {
        // A smile shows the upper teeth.
        let teeth_h = (gap * 0.45).min(0.05) + 0.02 * a(Au::Au12);
        let teeth: Vec<P> = inner_top
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let x = -1.0 + 2.0 * i as f32 / (n - 1) as f32;
                [p[0], p[1] - teeth_h * (1.0 - x.powi(4))]
            })
            .collect();
        t.ribbon(&inner_top, &teeth, pal.teeth, pal.teeth);
        if gap > 0.12 {
            let low: Vec<P> = inner_bottom
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let x = -1.0 + 2.0 * i as f32 / (n - 1) as f32;
                    [p[0] * 0.8, p[1] + 0.025 * (1.0 - x.powi(4))]
                })
                .collect();
            t.ribbon(
                &inner_bottom,
                &low,
                with_alpha(pal.teeth, 0.8),
                with_alpha(pal.teeth, 0.8),
            );
        }
    }
    t.ribbon(&outer_top, &inner_top, pal.lip, pal.lip_dark);
    t.ribbon(&inner_bottom, &outer_bottom, pal.lip_dark, pal.lip);
    t.stroke(&inner_top, 0.012, 1.0, with_alpha(pal.mouth, 0.8));
    // Dimples at the corners when they are pulled (AU12) or pressed down (AU15).
    for side in [-1.0f32, 1.0] {
        let c = [side * (corner[0] + 0.03), corner[1]];
        let d = 0.05 * a(Au::Au12) - 0.05 * a(Au::Au15);
        let line = [at(c, 1.0), at([c[0] + side * 0.02, c[1] + d], 1.0)];
        t.stroke(
            &line,
            0.02,
            0.4,
            with_alpha(pal.shadow, 0.5 * (a(Au::Au12) + a(Au::Au15))),
        );
    }
}

/// What the expression recipes file holds: for each expression name, the
/// action units and their intensities at full expression.
pub type Recipes = BTreeMap<String, BTreeMap<Au, f32>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn recipes() -> Recipes {
        ron::from_str(include_str!("../../assets/demo/ada.expressions.ron")).unwrap()
    }

    #[test]
    fn every_emotion_has_an_ekman_recipe() {
        let r = recipes();
        for name in [
            "angry", "disgust", "fear", "happy", "sad", "surprise", "neutral",
        ] {
            assert!(r.contains_key(name), "no recipe for {name}");
        }
        let has =
            |e: &str, units: &[Au]| units.iter().all(|u| r[e].get(u).is_some_and(|v| *v > 0.2));
        assert!(has("happy", &[Au::Au6, Au::Au12]));
        assert!(has("sad", &[Au::Au1, Au::Au4, Au::Au15]));
        assert!(has("surprise", &[Au::Au1, Au::Au2, Au::Au5, Au::Au26]));
        assert!(has(
            "fear",
            &[Au::Au1, Au::Au2, Au::Au4, Au::Au5, Au::Au20, Au::Au26]
        ));
        assert!(has("angry", &[Au::Au4, Au::Au5, Au::Au7, Au::Au23]));
        assert!(has("disgust", &[Au::Au9, Au::Au15, Au::Au16]));
        assert!(r["neutral"].values().all(|v| *v == 0.0));
    }

    #[test]
    fn the_face_is_well_formed_and_moves_with_its_units() {
        let neutral = draw(&ActionUnits::default(), &Pose::default());
        assert!(neutral.positions.len() / 3 > 500);
        assert_eq!(neutral.positions.len(), neutral.colours.len());
        assert!(neutral.positions.iter().flatten().all(|v| v.is_finite()));
        // Every unit at full intensity, one by one, changes the drawing.
        for u in Au::ALL {
            let mut au = ActionUnits::default();
            au.set(u, 1.0);
            let d = draw(&au, &Pose::default());
            assert!(d.positions.iter().flatten().all(|v| v.is_finite()), "{u:?}");
            let moved = d.positions.len() != neutral.positions.len()
                || d.positions
                    .iter()
                    .zip(&neutral.positions)
                    .any(|(a, b)| a != b)
                || d.colours.iter().zip(&neutral.colours).any(|(a, b)| a != b);
            assert!(moved, "{} changes nothing", u.name());
        }
    }

    #[test]
    fn smiles_lift_the_corners_and_frowns_drop_them() {
        let mut happy = ActionUnits::default();
        happy.set(Au::Au12, 1.0);
        let mut sad = ActionUnits::default();
        sad.set(Au::Au15, 1.0);
        let rest = mouth_corner(&ActionUnits::default());
        assert!(mouth_corner(&happy)[1] > rest[1] + 0.05);
        assert!(mouth_corner(&sad)[1] < rest[1] - 0.05);
        let mut open = ActionUnits::default();
        open.set(Au::Au26, 1.0);
        assert!(mouth_gap(&open) > 0.2 && mouth_gap(&ActionUnits::default()) == 0.0);
    }

    #[test]
    fn blending_is_continuous() {
        let r = recipes();
        let a = ActionUnits::from_recipe(&r["neutral"], 1.0);
        let b = ActionUnits::from_recipe(&r["surprise"], 1.0);
        assert_eq!(a.lerp(&b, 0.0), a);
        assert_eq!(a.lerp(&b, 1.0), b);
        let half = ActionUnits::from_recipe(&r["surprise"], 0.5);
        assert!((a.lerp(&b, 0.5).get(Au::Au26) - half.get(Au::Au26)).abs() < 1e-6);
    }
}
