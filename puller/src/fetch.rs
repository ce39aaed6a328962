//! Download and verify NARs into the staging directory.
//!
//! A NAR's compressed bytes are all here, and FileSize and FileHash hold for
//! them, before a decoder sees one of them: liblzma and zstd only ever decode
//! what the publisher signed, and a decoder never waits on the network.
//!
//! ```text
//! body → count ≤ FileSize, sha256 → memory (under 1 MiB: most of a closure)
//!                                 | a temporary file (larger: never whole in memory)
//!      → FileSize, FileHash → [if sealed: age, every chunk authenticated]
//!      → decompress (xz memory limit, zstd window limit)
//!      → count ≤ NarSize, sha256 → strict NAR reader → temporary file
//! ```
//!
//! Decoding takes one of the decoder slots, one per CPU: each decoder may
//! hold an 8 MiB xz window, so the slots bound the agent's memory as well as
//! its threads.
//!
//! The file is renamed to `staging/nar/<narhash>.nar` only when FileSize,
//! FileHash, NarSize, NarHash and the NAR's structure all check out, so in
//! this run a file under that name is verified content. It is not synced: a
//! later run did not write it, so it trusts the name no more than a download
//! (a power loss may have torn it): it reads the file again through the
//! strict NAR reader against the pinned NarSize and NarHash (cheap, local),
//! reuses it if it passes and deletes it if not.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufRead, BufWriter, Read, Seek, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nixcast_common::hash::HashingCounter;
use nixcast_common::manifest::{Compression, Entry};
use nixcast_common::seal::{self, Identity};
use nixcast_common::{nar, Sha256Hash};
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::source::{FetchError, Source};
use crate::staging::{spools, Staging};

/// liblzma's memory limit for one xz stream; `xz -9` needs 65 MiB to decode.
const XZ_MEMLIMIT: u64 = 128 << 20;
/// zstd window: 2^27 = 128 MiB, zstd's own default maximum for decoding.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;
const TRANSPORT_ATTEMPTS: u32 = 3;

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
            FetchError::Transport { url, msg } | FetchError::Refused { url, msg } => (url, msg),
            FetchError::TooLarge { url, cap } => (url, format!("more than {cap} bytes")),
        };
        NarError::Fetch {
            path: path.to_owned(),
            url,
            msg,
        }
    }
}

/// What the downloads share: small NARs' bytes in memory, and the decoders.
pub struct Slots {
    /// One permit per byte of small NARs held in memory.
    buffered: Semaphore,
    decoders: Semaphore,
    /// The NARs (by FileHash) whose bytes go first, not yet in: every other
    /// download waits for them (`Slots::first`).
    first: tokio::sync::watch::Sender<HashSet<Sha256Hash>>,
}

/// Bytes of small NARs requested or read and not yet decoded, at most: a
/// request takes its NAR's FileSize from it first, so this also bounds the
/// small requests in flight (below `--jobs` when their NARs near 1 MiB).
const BUFFERED: usize = 8 << 20;

impl Slots {
    pub fn new(decoders: usize) -> Self {
        Slots {
            buffered: Semaphore::new(BUFFERED),
            decoders: Semaphore::new(decoders),
            first: tokio::sync::watch::Sender::new(HashSet::new()),
        }
    }

    /// Downloads these NARs (by FileHash) before any other: the others
    /// start once their bytes are in (or their fetch ended), not decoded.
    /// On a link shared by every request, a NAR that nearly every path
    /// needs then arrives at the link's full speed, and Nix can import while
    /// the rest download; alongside thirty others it came last.
    pub fn first(self, hashes: HashSet<Sha256Hash>) -> Self {
        self.first.send_replace(hashes);
        self
    }

    /// For a NAR that goes first, its turn, which lets the others start
    /// when dropped; for any other, waits until those are in.
    async fn turn(&self, e: &Entry) -> Option<Turn<'_>> {
        if self.first.borrow().contains(&e.file_hash) {
            return Some(Turn {
                slots: self,
                file_hash: e.file_hash,
            });
        }
        let _ = self.first.subscribe().wait_for(HashSet::is_empty).await;
        None
    }

    /// One of the decoder slots, for a decoder that is not `fetch_one`'s.
    pub async fn decoder(&self) -> SemaphorePermit<'_> {
        self.decoders.acquire().await.expect("never closed")
    }
}

/// A NAR that goes first, until its bytes are in.
struct Turn<'a> {
    slots: &'a Slots,
    file_hash: Sha256Hash,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.slots.first.send_modify(|first| {
            first.remove(&self.file_hash);
        });
    }
}

/// Fetches and verifies one NAR, unless a verified copy is already staged.
/// Returns the number of bytes downloaded.
pub async fn fetch_one(
    source: &Source,
    staging: &Staging,
    e: &Entry,
    progress: Arc<AtomicU64>,
    slots: &Slots,
    ids: &Arc<[Identity]>,
) -> Result<u64, NarError> {
    let mut turn = slots.turn(e).await;
    let dest = staging.nar(e);
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
        let downloaded = download(source, staging, e, &progress, slots).await;
        turn.take();
        let failure = match downloaded {
            // A small NAR's bytes stay counted in the budget until decoded.
            Ok((input, _buffered)) => {
                // Decoding never waits on the network: every byte is here.
                let _slot = slots.decoders.acquire().await.expect("never closed");
                let (e2, d2, ids) = (e.clone(), dest.clone(), ids.clone());
                let decoded =
                    tokio::task::spawn_blocking(move || decode_into(input, &e2, &d2, &ids))
                        .await
                        .unwrap_or_else(|j| Err(Failure::Local(j.to_string())));
                match decoded {
                    Ok(()) => return Ok(e.file_size),
                    Err(failure) => failure,
                }
            }
            Err(failure) => failure,
        };
        match failure {
            Failure::Transport(msg) if attempt < TRANSPORT_ATTEMPTS => {
                tracing::warn!(%url, error = %msg, "download failed, retrying");
                attempt += 1;
            }
            Failure::Transport(msg) => return Err(NarError::Fetch { path, url, msg }),
            Failure::Verify(msg) => return Err(NarError::Verify { path, url, msg }),
            Failure::Local(msg) => return Err(NarError::Local { path, msg }),
            Failure::Unavailable(err) => return Err(NarError::from_fetch(&path, err)),
        }
    }
}

enum Failure {
    Transport(String),
    Verify(String),
    Local(String),
    /// The request itself failed (not found, or after its own retries).
    Unavailable(FetchError),
}

/// A NAR's compressed bytes, every one of them here.
enum Input {
    /// A small NAR, read into memory; FileSize and FileHash are checked on a
    /// decoder's thread, before it decodes.
    Whole(Vec<u8>),
    /// A large one, spooled to a temporary file in staging as it arrived;
    /// FileSize and FileHash were checked as it was.
    Spooled(tempfile::NamedTempFile),
}

/// Downloads a NAR's compressed bytes: a small one into memory, within
/// `slots`' byte budget, whose permit comes back with it; a large one to a
/// file. A server that stalls or trickles holds a request, never a decoder.
async fn download<'s>(
    source: &Source,
    staging: &Staging,
    e: &Entry,
    progress: &Arc<AtomicU64>,
    slots: &'s Slots,
) -> Result<(Input, Option<SemaphorePermit<'s>>), Failure> {
    if spools(e) {
        let body = source.open(&e.url).await.map_err(Failure::Unavailable)?;
        let (e2, dir, p2) = (e.clone(), staging.nar_dir(), progress.clone());
        let file = tokio::task::spawn_blocking(move || spool(body, &e2, &dir, &p2))
            .await
            .unwrap_or_else(|j| Err(Failure::Local(j.to_string())))?;
        return Ok((Input::Spooled(file), None));
    }
    // Below SPOOL_FROM, so within u32 and the budget.
    let budget = e.file_size.max(1) as u32;
    let permit = slots
        .buffered
        .acquire_many(budget)
        .await
        .expect("never closed");
    match source.get_small(&e.url, e.file_size).await {
        Ok(bytes) => {
            progress.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok((Input::Whole(bytes), Some(permit)))
        }
        Err(FetchError::TooLarge { .. }) => Err(Failure::Verify(format!(
            "more bytes than the FileSize of {}",
            e.file_size
        ))),
        Err(FetchError::Transport { msg, .. }) => Err(Failure::Transport(msg)),
        Err(err) => Err(Failure::Unavailable(err)),
    }
}

/// Checks what arrived of a NAR's compressed bytes against the entry: too
/// few is a transport failure, a wrong count or hash is the bytes' fault.
fn check_file(count: u64, file_hash: Sha256Hash, e: &Entry) -> Result<(), Failure> {
    if count < e.file_size {
        return Err(Failure::Transport(format!(
            "truncated: {count} of {} bytes",
            e.file_size
        )));
    }
    if count != e.file_size || file_hash != e.file_hash {
        return Err(Failure::Verify(format!(
            "FileSize/FileHash mismatch: expected {} bytes {}, got {count} bytes {file_hash}",
            e.file_size, e.file_hash
        )));
    }
    Ok(())
}

/// Copies a large NAR's body to a temporary file in `dir`, counting its
/// bytes against FileSize (a body that goes on past it is refused there) and
/// hashing them, and returns the file once FileSize and FileHash hold.
fn spool(
    mut body: Box<dyn Read + Send>,
    e: &Entry,
    dir: &Path,
    progress: &AtomicU64,
) -> Result<tempfile::NamedTempFile, Failure> {
    let tmp = temp_in(dir)?;
    let mut out = HashingCounter::new(BufWriter::with_capacity(128 << 10, tmp.as_file()));
    let local = |err: io::Error| Failure::Local(format!("writing {}: {err}", tmp.path().display()));
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(Failure::Transport(crate::source::error_chain(&err))),
        };
        if out.count() + n as u64 > e.file_size {
            return Err(Failure::Verify(format!(
                "more bytes than the FileSize of {}",
                e.file_size
            )));
        }
        out.write_all(&buf[..n]).map_err(local)?;
        progress.fetch_add(n as u64, Ordering::Relaxed);
    }
    let (mut w, file_hash, count) = out.finish();
    w.flush().map_err(local)?;
    drop(w);
    check_file(count, file_hash, e)?;
    Ok(tmp)
}

fn temp_in(dir: &Path) -> Result<tempfile::NamedTempFile, Failure> {
    tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|err| Failure::Local(format!("cannot create a file in {}: {err}", dir.display())))
}

/// Decodes a NAR whose compressed bytes checked out into a temporary file,
/// and renames it to `dest` once NarSize, NarHash and its structure hold.
fn decode_into(input: Input, e: &Entry, dest: &Path, ids: &[Identity]) -> Result<(), Failure> {
    let tmp = temp_in(dest.parent().expect("staging/nar"))?;
    let out = BufWriter::with_capacity(128 << 10, tmp.as_file());
    match input {
        Input::Whole(bytes) => {
            check_file(bytes.len() as u64, Sha256Hash::digest(&bytes), e)?;
            decode_and_check(io::Cursor::new(bytes), e, ids, out)?
        }
        Input::Spooled(mut file) => {
            file.as_file_mut()
                .seek(io::SeekFrom::Start(0))
                .map_err(|err| {
                    Failure::Local(format!("reading {}: {err}", file.path().display()))
                })?;
            // A failure to read it back is this host's disk, not the
            // publisher's bytes.
            let mut back = ReadBack {
                inner: file.as_file(),
                error: None,
            };
            let input = io::BufReader::with_capacity(64 << 10, &mut back);
            let decoded = decode_and_check(input, e, ids, out);
            if let Some(err) = back.error {
                let p = file.path().display();
                return Err(Failure::Local(format!("reading {p}: {err}")));
            }
            decoded?
        }
    }
    // Not synced: a file a power loss tore is caught by the check a later
    // run makes before it uses a staged NAR (`reverify`), and Nix checks
    // NarHash again on import. An fsync per NAR cost ~2 ms each.
    tmp.persist(dest)
        .map_err(|err| Failure::Local(format!("cannot rename to {}: {err}", dest.display())))?;
    Ok(())
}

/// A spooled file read back, remembering a read error.
struct ReadBack<R> {
    inner: R,
    error: Option<io::Error>,
}

impl<R: Read> Read for ReadBack<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).inspect_err(|err| {
            if err.kind() != io::ErrorKind::Interrupted {
                self.error = Some(io::Error::new(err.kind(), err.to_string()));
            }
        })
    }
}

/// Decodes `input` and checks the NAR. The decoders read through `input`'s
/// buffer (the bytes themselves for a NAR in memory), so that after the
/// stream's end we can see whether any byte is left over: trailing data is
/// refused even when FileSize and FileHash count it.
fn decode_and_check<R: BufRead, W: Write>(
    input: R,
    e: &Entry,
    ids: &[Identity],
    out: W,
) -> Result<(), Failure> {
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

/// The NAR `decoded` gives, read through the strict reader into a
/// temporary file beside `dest` and held to `e`'s NarSize and NarHash, as
/// a downloaded one is; the caller renames it to `dest` once it has checked
/// what it decoded from.
pub fn check_into(
    decoded: impl Read,
    e: &Entry,
    dest: &Path,
) -> Result<tempfile::NamedTempFile, String> {
    let message = |f: Failure| match f {
        Failure::Transport(m) | Failure::Verify(m) | Failure::Local(m) => m,
        Failure::Unavailable(err) => err.to_string(),
    };
    let tmp = temp_in(dest.parent().expect("staging/nar")).map_err(message)?;
    let out = BufWriter::with_capacity(128 << 10, tmp.as_file());
    check_nar(decoded, e, out).map_err(message)?;
    Ok(tmp)
}

/// A staged NAR checked as if it had just been downloaded: the strict NAR
/// reader, NarSize and NarHash, and no byte after the archive's end.
fn reverify(p: &Path, e: &Entry) -> Result<(), String> {
    let f = File::open(p).map_err(|err| err.to_string())?;
    let mut input = io::BufReader::with_capacity(128 << 10, f);
    check_nar(&mut input, e, io::sink()).map_err(|f| match f {
        Failure::Transport(m) | Failure::Verify(m) | Failure::Local(m) => m,
        Failure::Unavailable(err) => err.to_string(),
    })?;
    match input.fill_buf() {
        Ok([]) => Ok(()),
        Ok(_) => Err("data after the end of the archive".to_owned()),
        Err(err) => Err(err.to_string()),
    }
}

#[cfg(test)]
mod tests;
