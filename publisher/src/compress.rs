//! Streaming compressors for NAR files, and a path's NAR dumped through
//! them, checked against Nix's database, with its signed narinfo.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use nixcast_common::hash::{HashingCounter, Sha256Hash};
use nixcast_common::narinfo::NarInfo;
use nixcast_common::{nar, SecretKey};

use crate::nix::PathInfo;

use nixcast_common::manifest::Compression;

/// xz preset: Nix's default (`xz -6`), so our files match what `nix copy` writes.
pub const XZ_PRESET: u32 = 6;
/// zstd level: the library default, as Nix uses.
pub const ZSTD_LEVEL: i32 = 3;

pub enum Encoder<W: Write> {
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
    None(W),
}

impl<W: Write> Encoder<W> {
    pub fn new(compression: Compression, out: W) -> io::Result<Self> {
        Ok(match compression {
            Compression::Xz => Encoder::Xz(liblzma::write::XzEncoder::new(out, XZ_PRESET)),
            Compression::Zstd => Encoder::Zstd(zstd::Encoder::new(out, ZSTD_LEVEL)?),
            Compression::None => Encoder::None(out),
        })
    }

    /// Writes the end of the stream and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Xz(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::None(w) => w.flush(),
        }
    }
}

/// Dumps the NAR of `info`'s path (its files at `files`, the store path
/// itself but in unit tests) through `compression` into `out`, checked
/// against Nix's database, and returns `out`. The NAR we made must be the one
/// Nix registered; otherwise the store is corrupt or the path changed under
/// us, and nothing of it is published.
pub fn dump_compressed<W: Write>(
    files: &Path,
    info: &PathInfo,
    compression: Compression,
    out: W,
) -> Result<W> {
    let path = info.path.to_string();
    let nar = HashingCounter::new(Encoder::new(compression, out)?);
    let nar = nar::dump_path(files, nar).with_context(|| format!("cannot dump {path}"))?;
    let (encoder, nar_hash, nar_size) = nar.finish();
    ensure!(
        nar_hash == info.nar_hash && nar_size == info.nar_size,
        "the NAR of {path} does not match Nix's database: Nix says {} ({} bytes), \
         the files give {nar_hash} ({nar_size} bytes); run `nix-store --verify-path {path}`",
        info.nar_hash,
        info.nar_size
    );
    Ok(encoder.finish()?)
}

/// The narinfo of a path just written at `url`, signed with `key`.
pub fn signed_narinfo(
    info: &PathInfo,
    url: String,
    compression: Compression,
    file_hash: Sha256Hash,
    file_size: u64,
    key: &SecretKey,
) -> NarInfo {
    let mut ni = NarInfo {
        store_path: info.path.clone(),
        url,
        compression: Some(compression.as_str().to_owned()),
        file_hash: Some(file_hash),
        file_size: Some(file_size),
        nar_hash: info.nar_hash,
        nar_size: info.nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        sigs: Vec::new(),
        ca: None,
        system: None,
        quirks: Default::default(),
    };
    ni.sign(key);
    ni
}
