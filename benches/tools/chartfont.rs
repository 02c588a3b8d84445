//! The TTF font the bench charts draw with (`make bench`'s chart.png, `make soak`'s soak.png):
//! plotters' pure-Rust text rendering needs one registered as "sans-serif".

use plotters::style::FontStyle;

const FONT_FILES: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

/// Register the first font found as "sans-serif".
pub(crate) fn register_font() -> anyhow::Result<()> {
    for f in FONT_FILES {
        if let Ok(bytes) = std::fs::read(f) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                .map_err(|_| anyhow::anyhow!("{f}: not a usable font"))?;
            return Ok(());
        }
    }
    anyhow::bail!("no TTF font found (apt-get install fonts-dejavu-core)")
}
