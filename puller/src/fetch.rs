//! Download and verify NARs into the staging directory.
//!
//! One pass per NAR, never holding a large one in memory:
//!
//! ```text
//! body → count ≤ FileSize, sha256 → [open, if sealed: age, every chunk authenticated]
//!      → decompress (xz memory limit, zstd window limit)
//!      → count ≤ NarSize, sha256 → strict NAR reader → temporary file
//! ```
//!
//! A small NAR (under 1 MiB compressed, most of a closure) is read whole
//! first, and its FileSize and FileHash are checked before a decoder sees a
//! byte of it: liblzma and zstd only ever decode what the publisher signed.
//! A large one streams; its decoder is bounded (memory limit, NarSize) until
//! FileHash is checked at its end.
//!
//! The file is renamed to `staging/nar/<narhash>.nar` only when FileSize,
//! FileHash, NarSize, NarHash and the NAR's structure all check out, so in
//! this run a file under that name is verified content. It is not synced: a
//! later run did not write it, so it trusts the name no more than a download
//! (a power loss may have torn it): it reads the file again through the
//! strict NAR reader against the pinned NarSize and NarHash (cheap, local),
//! reuses it if it passes and deletes it if not.

use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nixcast_common::hash::HashingCounter;
use nixcast_common::manifest::{Compression, Entry};
use nixcast_common::seal::{self, Identity};
use nixcast_common::{nar, Sha256Hash};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::source::{FetchError, Source};

/// liblzma's memory limit for one xz stream; `xz -9` needs 65 MiB to decode.
const XZ_MEMLIMIT: u64 = 128 << 20;
/// zstd window: 2^27 = 128 MiB, zstd's own default maximum for decoding.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
const TRANSPORT_ATTEMPTS: u32 = 3;
/// Compressed size below which a NAR's decoding waits for a decoder slot.
const SMALL: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// The bytes could not be had: retry later.
    #[error("fetching {url} for {path}: {msg}")]
    Fetch {
        path: String,
        url: String,
        msg: String,
    },
    /// The bytes arrived and are wrong: refuse.
    #[error("refusing {url} for {path}: {msg}")]
    Verify {
        path: String,
        url: String,
        msg: String,
    },
    #[error("staging {path}: {msg}")]
    Local { path: String, msg: String },
}

impl NarError {
    fn from_fetch(path: &str, e: FetchError) -> Self {
        let (url, msg) = match e {
            FetchError::NotFound(u) => (u, "not found".to_owned()),
            FetchError::Transport { url, msg } => (url, msg),
            FetchError::TooLarge { url, cap } => (url, format!("more than {cap} bytes")),
        };
        NarError::Fetch {
            path: path.to_owned(),
            url,
            msg,
        }
    }
}

/// Whether a NAR is decoded as it arrives (else it is read whole first).
pub fn streams(e: &Entry) -> bool {
    e.file_size >= SMALL
}

pub fn staged_path(staging: &Path, e: &Entry) -> PathBuf {
    staging
        .join("nar")
        .join(format!("{}.nar", e.nar_hash.to_nixbase32()))
}

/// What small NARs share: their bytes in memory, and the decoder threads.
pub struct Slots {
    /// One permit per byte of small NARs held in memory.
    buffered: Semaphore,
    decoders: Semaphore,
}

/// Bytes of small NARs read whole and not yet decoded, at most: what many
/// requests in flight may hold while the decoders are busy.
const BUFFERED: usize = 16 << 20;

impl Slots {
    pub fn new(decoders: usize) -> Self {
        Slots {
            buffered: Semaphore::new(BUFFERED),
            decoders: Semaphore::new(decoders),
        }
    }
}

/// Fetches and verifies one NAR, unless a verified copy is already staged.
/// Returns the number of bytes downloaded. A NAR smaller than `SMALL`
/// (compressed) is read into memory, within `slots`' byte budget, then waits
/// for one of its decoders.
pub async fn fetch_one(
    source: &Source,
    staging: &Path,
    e: &Entry,
    progress: Arc<AtomicU64>,
    slots: &Slots,
    ids: &Arc<[Identity]>,
) -> Result<u64, NarError> {
    let dest = staged_path(staging, e);
    let path = e.store_path.to_string();
    if dest.exists() {
        let (d, e2) = (dest.clone(), e.clone());
        let checked = tokio::task::spawn_blocking(move || reverify(&d, &e2))
            .await
            .unwrap_or_else(|j| Err(j.to_string()));
        match checked {
            Ok(()) => {
                tracing::debug!(%path, "already staged and verified again");
                return Ok(0);
            }
            Err(why) => {
                tracing::warn!(%path, file = %dest.display(), "discarding a staged NAR: {why}");
                fs::remove_file(&dest).map_err(|err| NarError::Local {
                    path: path.clone(),
                    msg: format!("cannot remove {}: {err}", dest.display()),
                })?;
            }
        }
    }
    let url = source.url_of(&e.url);
    let mut attempt = 1;
    loop {
        // A small NAR is read whole before it takes a decoder slot, so that
        // a server that stalls or trickles holds a request, never a slot.
        let _buffer = if streams(e) {
            None
        } else {
            // Below SMALL, so within u32 and the budget.
            let bytes = e.file_size.max(1) as u32;
            Some(
                slots
                    .buffered
                    .acquire_many(bytes)
                    .await
                    .expect("never closed"),
            )
        };
        let body = if !streams(e) {
            match source.get_small(&e.url, e.file_size).await {
                Ok(bytes) => Input::Whole(bytes),
                Err(FetchError::TooLarge { .. }) => {
                    return Err(NarError::Verify {
                        path,
                        url,
                        msg: format!("more bytes than the FileSize of {}", e.file_size),
                    })
                }
                Err(FetchError::Transport { msg, .. }) if attempt < TRANSPORT_ATTEMPTS => {
                    tracing::warn!(%url, error = %msg, "download failed, retrying");
                    attempt += 1;
                    continue;
                }
                Err(err) => return Err(NarError::from_fetch(&path, err)),
            }
        } else {
            Input::Stream(
                source
                    .open(&e.url)
                    .await
                    .map_err(|err| NarError::from_fetch(&path, err))?,
            )
        };
        let _slot = if !streams(e) {
            Some(slots.decoders.acquire().await.expect("never closed"))
        } else {
            None
        };
        let (e2, d2, p2, ids) = (e.clone(), dest.clone(), progress.clone(), ids.clone());
        let result = tokio::task::spawn_blocking(move || verify_into(body, &e2, &d2, &p2, &ids))
            .await
            .map_err(|j| NarError::Local {
                path: path.clone(),
                msg: j.to_string(),
            })?;
        match result {
            Ok(()) => return Ok(e.file_size),
            Err(Failure::Transport(msg)) if attempt < TRANSPORT_ATTEMPTS => {
                tracing::warn!(%url, error = %msg, "download failed, retrying");
                attempt += 1;
            }
            Err(Failure::Transport(msg)) => return Err(NarError::Fetch { path, url, msg }),
            Err(Failure::Verify(msg)) => return Err(NarError::Verify { path, url, msg }),
            Err(Failure::Local(msg)) => return Err(NarError::Local { path, msg }),
        }
    }
}

enum Failure {
    Transport(String),
    Verify(String),
    Local(String),
}

/// The compressed side: counts, hashes, stops past FileSize, remembers
/// whether the transport failed (so that failure is told from tampering).
struct Body<'a> {
    inner: Box<dyn Read + Send>,
    count: u64,
    cap: u64,
    /// None: FileHash was checked before (`Input::Whole`).
    hasher: Option<Sha256>,
    transport_error: Option<String>,
    eof: bool,
    progress: &'a AtomicU64,
}

impl Read for Body<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Err(e),
            Err(e) => {
                self.transport_error = Some(crate::source::error_chain(&e));
                return Err(e);
            }
        };
        if n == 0 {
            self.eof = true;
        }
        self.count += n as u64;
        if self.count > self.cap {
            return Err(io::Error::other(format!(
                "more bytes than the FileSize of {}",
                self.cap
            )));
        }
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.progress.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The decompressed side: refuses a byte past NarSize (a decompression bomb
/// stops there) and copies what it reads to the staging file.
struct Nar<R, W> {
    inner: R,
    out: HashingCounter<W>,
    cap: u64,
    /// Set when the copy could not be written: the reader's error then says
    /// nothing about the NAR.
    write_error: Option<io::Error>,
}

impl<R: Read, W: Write> Read for Nar<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.out.count() + n as u64 > self.cap {
            return Err(io::Error::other(format!(
                "decompresses to more than the NarSize of {} bytes",
                self.cap
            )));
        }
        if let Err(err) = self.out.write_all(&buf[..n]) {
            let copy = io::Error::new(err.kind(), err.to_string());
            self.write_error = Some(err);
            return Err(copy);
        }
        Ok(n)
    }
}

/// A NAR's compressed bytes, as they arrive.
enum Input {
    /// Read whole (a small NAR): FileSize and FileHash are checked before a
    /// byte reaches a decoder, so that the decoders only ever see what the
    /// publisher signed.
    Whole(Vec<u8>),
    /// Streamed (a large NAR): checked as it is decoded.
    Stream(Box<dyn Read + Send>),
}

fn verify_into(
    input: Input,
    e: &Entry,
    dest: &Path,
    progress: &AtomicU64,
    ids: &[Identity],
) -> Result<(), Failure> {
    let dir = dest.parent().expect("staging/nar");
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|err| {
            Failure::Local(format!("cannot create a file in {}: {err}", dir.display()))
        })?;
    let (inner, hasher): (Box<dyn Read + Send>, _) = match input {
        Input::Whole(bytes) => {
            if (bytes.len() as u64) < e.file_size {
                return Err(Failure::Transport(format!(
                    "truncated: {} of {} bytes",
                    bytes.len(),
                    e.file_size
                )));
            }
            let file_hash = Sha256Hash::digest(&bytes);
            if file_hash != e.file_hash {
                return Err(Failure::Verify(format!(
                    "FileSize/FileHash mismatch: expected {} bytes {}, got {} bytes {file_hash}",
                    e.file_size,
                    e.file_hash,
                    bytes.len()
                )));
            }
            (Box::new(io::Cursor::new(bytes)), None)
        }
        Input::Stream(body) => (body, Some(Sha256::new())),
    };
    let mut body = Body {
        inner,
        count: 0,
        cap: e.file_size,
        hasher,
        transport_error: None,
        eof: false,
        progress,
    };
    let checked = decode_and_check(
        &mut body,
        e,
        ids,
        BufWriter::with_capacity(128 << 10, tmp.as_file()),
    );
    // Read what the decoder left (bounded by FileSize) so FileHash covers every byte.
    let drained = checked.and_then(|()| {
        io::copy(&mut body, &mut io::sink())
            .map(drop)
            .map_err(|err| Failure::Verify(err.to_string()))
    });
    if let Some(t) = body.transport_error.take() {
        return Err(Failure::Transport(t));
    }
    if let Err(failure) = drained {
        let msg = match failure {
            Failure::Verify(msg) => msg,
            other => return Err(other),
        };
        if body.eof && body.count < e.file_size {
            return Err(Failure::Transport(format!(
                "truncated: {} of {} bytes ({msg})",
                body.count, e.file_size
            )));
        }
        return Err(Failure::Verify(msg));
    }
    let file_hash = body.hasher.take().map(|h| Sha256Hash(h.finalize().into()));
    if body.count != e.file_size || file_hash.is_some_and(|h| h != e.file_hash) {
        return Err(Failure::Verify(format!(
            "FileSize/FileHash mismatch: expected {} bytes {}, got {} bytes {}",
            e.file_size,
            e.file_hash,
            body.count,
            file_hash.map_or_else(|| "(checked before)".to_owned(), |h| h.to_string())
        )));
    }
    // Not synced: a file a power loss tore is caught by the check a later
    // run makes before it uses a staged NAR (`reverify`), and Nix checks
    // NarHash again on import. An fsync per NAR cost ~2 ms each.
    tmp.persist(dest)
        .map_err(|err| Failure::Local(format!("cannot rename to {}: {err}", dest.display())))?;
    Ok(())
}

fn decode_and_check<W: Write>(
    body: &mut Body<'_>,
    e: &Entry,
    ids: &[Identity],
    out: W,
) -> Result<(), Failure> {
    // The decoders read through our buffer, so that after the stream's end we
    // can see whether any byte is left over: trailing data is refused even
    // when FileSize and FileHash count it.
    let input = io::BufReader::with_capacity(64 << 10, body);
    if !e.is_sealed() {
        return decompress_and_check(input, e, out);
    }
    // Every chunk is authenticated before its bytes reach the decompressor;
    // a sealed stream that ends early, or with bytes after its last chunk,
    // is an error.
    let opened = seal::open(ids, input).map_err(|err| {
        Failure::Verify(match err {
            seal::SealError::NoMatchingIdentity => {
                "sealed to none of this host's identities".to_owned()
            }
            err => format!("cannot open the sealed NAR: {err}"),
        })
    })?;
    decompress_and_check(io::BufReader::with_capacity(64 << 10, opened), e, out)
}

fn decompress_and_check<R: BufRead, W: Write>(input: R, e: &Entry, out: W) -> Result<(), Failure> {
    let leftover = |mut r: R| -> Result<(), Failure> {
        match r.fill_buf() {
            Ok([]) => Ok(()),
            Ok(_) => Err(Failure::Verify(
                "trailing data after the compressed stream".to_owned(),
            )),
            Err(err) => Err(Failure::Verify(err.to_string())),
        }
    };
    let verify = |err: io::Error| Failure::Verify(err.to_string());
    match e.compression {
        Compression::Xz => {
            // The container's own check (CRC64) is skipped: FileHash covers
            // every compressed byte and NarHash every decoded one.
            let stream = liblzma::stream::Stream::new_stream_decoder(
                XZ_MEMLIMIT,
                liblzma::stream::IGNORE_CHECK,
            )
            .map_err(|err| Failure::Verify(err.to_string()))?;
            let mut d = liblzma::bufread::XzDecoder::new_stream(input, stream);
            check_nar(&mut d, e, out)?;
            leftover(d.into_inner())
        }
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(input)
                .map_err(verify)?
                .single_frame();
            d.window_log_max(ZSTD_WINDOW_LOG_MAX).map_err(verify)?;
            check_nar(&mut d, e, out)?;
            leftover(d.finish())
        }
        Compression::None => {
            let mut input = input;
            check_nar(&mut input, e, out)?;
            leftover(input)
        }
    }
}

/// Reads the decompressed NAR through the strict reader, copying it to `out`,
/// and checks NarSize and NarHash. A failure to write the copy (a full disk)
/// is this host's, not the server's.
fn check_nar<R: Read, W: Write>(decoded: R, e: &Entry, out: W) -> Result<(), Failure> {
    let mut nar = Nar {
        inner: decoded,
        out: HashingCounter::new(out),
        cap: e.nar_size,
        write_error: None,
    };
    let valid = nar::validate(&mut nar, &nar::Limits::default());
    let local =
        |err: &dyn std::fmt::Display| Failure::Local(format!("writing the staged copy: {err}"));
    if let Some(err) = nar.write_error.take() {
        return Err(local(&err));
    }
    valid.map_err(|err| Failure::Verify(format!("{err}")))?;
    let Nar { out, .. } = nar;
    let (mut w, nar_hash, nar_size) = out.finish();
    w.flush().map_err(|err| local(&err))?;
    if nar_size != e.nar_size || nar_hash != e.nar_hash {
        return Err(Failure::Verify(format!(
            "NarHash/NarSize mismatch: expected {} bytes {}, got {nar_size} bytes {nar_hash}",
            e.nar_size, e.nar_hash
        )));
    }
    Ok(())
}

/// A staged NAR checked as if it had just been downloaded: the strict NAR
/// reader, NarSize and NarHash, and no byte after the archive's end.
fn reverify(p: &Path, e: &Entry) -> Result<(), String> {
    let f = File::open(p).map_err(|err| err.to_string())?;
    let mut input = io::BufReader::with_capacity(128 << 10, f);
    check_nar(&mut input, e, io::sink()).map_err(|f| match f {
        Failure::Transport(m) | Failure::Verify(m) | Failure::Local(m) => m,
    })?;
    match input.fill_buf() {
        Ok([]) => Ok(()),
        Ok(_) => Err("data after the end of the archive".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests;
