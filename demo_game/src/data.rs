//! The demo's data files (Ada's expressions, her dialogue) as Bevy assets in
//! RON: one loader per file type, errors with the line and column, and
//! reloading when the file changes (Bevy's `file_watcher`, on in this crate).

use std::marker::PhantomData;

use bevy::asset::io::Reader;
use bevy::asset::{AssetLoader, AsyncReadExt, LoadContext};
use bevy::prelude::*;
use serde::de::DeserializeOwned;

/// Why a data file was refused: where, and what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct DataError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (0 when only the line is known).
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl DataError {
    /// An error about the value `value` (a quoted string in `text`): at the
    /// first line that holds `"value"` outside a key, else line 1.
    pub fn at_value(text: &str, value: &str, message: String) -> Self {
        let quoted = format!("\"{value}\"");
        let line = text
            .lines()
            .position(|l| {
                l.match_indices(&quoted).any(|(i, _)| {
                    // Not a key: no `:` right after the string.
                    !l[i + quoted.len()..].trim_start().starts_with(':')
                })
            })
            .or_else(|| text.lines().position(|l| l.contains(&quoted)))
            .map_or(1, |i| i + 1);
        Self {
            line,
            column: 0,
            message,
        }
    }
}

/// A RON data file the demo reads.
pub trait DataFile: Asset + DeserializeOwned {
    /// The file name's extension (`dialogue.ron`).
    const EXTENSION: &'static str;

    /// Checks what the types cannot (references between entries, required
    /// entries), pointing into `text` for the line.
    fn check(&self, text: &str) -> Result<(), DataError>;

    /// Parses and checks `text`.
    fn parse(text: &str) -> Result<Self, DataError> {
        // `face: "happy"` rather than `face: Some("happy")`.
        let options = ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME);
        let value: Self = options.from_str(text).map_err(|e| DataError {
            line: e.span.start.line,
            column: e.span.start.col,
            message: e.code.to_string(),
        })?;
        value.check(text)?;
        Ok(value)
    }
}

/// Registers `T` as an asset with its loader.
pub struct DataFilePlugin<T>(PhantomData<fn() -> T>);

impl<T> Default for DataFilePlugin<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T: DataFile> Plugin for DataFilePlugin<T> {
    fn build(&self, app: &mut App) {
        app.init_asset::<T>()
            .register_asset_loader(DataLoader::<T>(PhantomData));
    }
}

/// Why loading a data file failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// Not UTF-8.
    #[error("not UTF-8 text")]
    Utf8,
    /// Not valid for its type.
    #[error(transparent)]
    Data(#[from] DataError),
}

#[derive(TypePath)]
struct DataLoader<T>(PhantomData<fn() -> T>);

impl<T: DataFile> AssetLoader for DataLoader<T> {
    type Asset = T;
    type Settings = ();
    type Error = LoadError;

    async fn load(
        &self,
        reader: &mut dyn Reader,
        _settings: &(),
        _load_context: &mut LoadContext<'_>,
    ) -> Result<T, LoadError> {
        // Data files are small: anything over 1 MiB is not one of ours.
        let mut bytes = Vec::new();
        AsyncReadExt::take(reader, 1 << 20)
            .read_to_end(&mut bytes)
            .await?;
        let text = std::str::from_utf8(&bytes).map_err(|_| LoadError::Utf8)?;
        Ok(T::parse(text)?)
    }

    fn extensions(&self) -> &[&str] {
        std::slice::from_ref(&T::EXTENSION)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_on_their_line() {
        let text = "(\n  \"a\": (next: \"b\"),\n  \"b\": (),\n  x: \"c\"\n)";
        assert_eq!(DataError::at_value(text, "b", String::new()).line, 2);
        assert_eq!(DataError::at_value(text, "c", String::new()).line, 4);
        assert_eq!(DataError::at_value(text, "zzz", String::new()).line, 1);
    }
}
