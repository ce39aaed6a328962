//! `fetch_one` against a cache directory: what is staged, what is refused
//! (a tampered byte, a wrong size, trailing data, a decompression bomb's
//! NarSize), what counts as a transport failure (a truncated body), and
//! that a staged copy is checked again before it is reused.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use nixcast_common::manifest::{nar_url, Compression, Entry};
use nixcast_common::Sha256Hash;

use super::*;
use crate::source::Source;
use crate::testing::{self, Cache};

struct Scene {
    cache: Cache,
    _state: tempfile::TempDir,
    staging: Staging,
    source: Source,
}

impl Scene {
    fn new() -> Self {
        let cache = Cache::new();
        let source = Source::dir(cache.path());
        let state = tempfile::tempdir().unwrap();
        let staging = Staging::in_state(state.path());
        staging.create().unwrap();
        Scene {
            cache,
            _state: state,
            staging,
            source,
        }
    }

    fn entry(&self, content: &str) -> Entry {
        self.cache
            .entry(&testing::store_path("x", 1), content, vec![])
    }

    /// A small entry (read into memory) and a large one (spooled to disk),
    /// both uncompressed.
    /// Serves `e` by a pipe that sends half of it, then waits to be told
    /// to go on; says when the reader took that half (all but a pipe's
    /// buffer of it).
    fn half_then_wait(
        &self,
        e: &Entry,
    ) -> (
        std::sync::mpsc::Sender<()>,
        std::sync::mpsc::Receiver<()>,
        std::thread::JoinHandle<()>,
    ) {
        let bytes = self.served(e);
        let pipe = self.cache.path().join(&e.url);
        std::fs::remove_file(&pipe).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&pipe)
            .status()
            .unwrap();
        assert!(made.success());
        let (go_on, wait) = std::sync::mpsc::channel::<()>();
        let (half_read, halfway) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new().write(true).open(&pipe).unwrap();
            w.write_all(&bytes[..bytes.len() / 2]).unwrap();
            half_read.send(()).unwrap();
            wait.recv().unwrap();
            w.write_all(&bytes[bytes.len() / 2..]).unwrap();
        });
        (go_on, halfway, writer)
    }

    fn small_and_large(&self) -> [Entry; 2] {
        // 1.5 MiB: above SPOOL_FROM.
        let content: String = (0..24_000u32).map(|i| format!("{i:063}\n")).collect();
        let large = Entry {
            store_path: testing::store_path("large", 2),
            ..self.entry(&content)
        };
        let small = self.entry("hello");
        assert!(!spools(&small) && spools(&large), "{}", large.file_size);
        [small, large]
    }

    /// An entry for `content`'s NAR compressed with xz, and those bytes (not
    /// served yet).
    fn xz_entry(&self, content: &str) -> (Entry, Vec<u8>) {
        let plain = self.entry(content);
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&self.served(&plain)).unwrap();
        let xz = xz.finish().unwrap();
        let file_hash = Sha256Hash::digest(&xz);
        let e = Entry {
            url: nar_url(&file_hash, Compression::Xz),
            compression: Compression::Xz,
            file_hash,
            file_size: xz.len() as u64,
            ..plain
        };
        (e, xz)
    }

    async fn fetch(&self, e: &Entry) -> Result<u64, NarError> {
        let slots = Slots::new(1);
        let ids: Arc<[Identity]> = Arc::new([]);
        fetch_one(
            &self.source,
            &self.staging,
            e,
            Arc::new(AtomicU64::new(0)),
            &slots,
            &ids,
        )
        .await
    }

    fn staged(&self, e: &Entry) -> bool {
        self.staging.nar(e).exists()
    }

    /// Replaces the bytes the cache serves for `e`.
    fn serve(&self, e: &Entry, bytes: &[u8]) {
        std::fs::write(self.cache.path().join(&e.url), bytes).unwrap();
    }

    fn served(&self, e: &Entry) -> Vec<u8> {
        std::fs::read(self.cache.path().join(&e.url)).unwrap()
    }

    /// A refused NAR left nothing in staging: not itself, no temporary file.
    fn assert_nothing_staged(&self, e: &Entry) {
        assert!(!self.staged(e));
        assert_eq!(self.leftovers(), 0);
    }

    /// No temporary file is left in `staging/nar` beside what was staged.
    fn leftovers(&self) -> usize {
        std::fs::read_dir(self.staging.nar_dir())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count()
    }
}

fn verify_msg(r: Result<u64, NarError>) -> String {
    match r {
        Err(NarError::Verify { msg, .. }) => msg,
        other => panic!("expected a verification failure, got {other:?}"),
    }
}

#[tokio::test]
async fn a_good_nar_is_staged_and_reused_once_checked_again() {
    let s = Scene::new();
    let [e, large] = s.small_and_large();
    for e in [&e, &large] {
        assert_eq!(s.fetch(e).await.unwrap(), e.file_size);
        assert!(s.staged(e));
    }
    assert_eq!(s.leftovers(), 0, "no spooled or temporary file is left");
    // Staged already: nothing downloaded (the source may be gone).
    std::fs::remove_file(s.cache.path().join(&e.url)).unwrap();
    assert_eq!(s.fetch(&e).await.unwrap(), 0);

    // A staged copy that is damaged is dropped and fetched again.
    let staged = s.staging.nar(&e);
    let mut bytes = std::fs::read(&staged).unwrap();
    s.serve(&e, &bytes);
    let n = bytes.len() - 20;
    bytes[n] ^= 1;
    std::fs::write(&staged, &bytes).unwrap();
    assert_eq!(s.fetch(&e).await.unwrap(), e.file_size);
    assert_eq!(
        Sha256Hash::digest(&std::fs::read(&staged).unwrap()),
        e.nar_hash
    );
}

#[tokio::test]
async fn a_tampered_byte_is_refused_and_nothing_is_staged() {
    let s = Scene::new();
    for e in s.small_and_large() {
        let mut bytes = s.served(&e);
        let n = bytes.len() / 2;
        bytes[n] ^= 1;
        s.serve(&e, &bytes);
        let msg = verify_msg(s.fetch(&e).await);
        assert!(msg.starts_with("FileSize/FileHash mismatch"), "{msg}");
        s.assert_nothing_staged(&e);
    }
}

#[tokio::test]
async fn more_bytes_than_the_file_size_are_refused() {
    let s = Scene::new();
    for e in s.small_and_large() {
        let mut bytes = s.served(&e);
        bytes.extend_from_slice(&[0; 8]);
        s.serve(&e, &bytes);
        let msg = verify_msg(s.fetch(&e).await);
        assert!(msg.contains("more bytes than the FileSize"), "{msg}");
        s.assert_nothing_staged(&e);
    }
}

#[tokio::test]
async fn a_truncated_body_is_a_transport_failure_not_tampering() {
    let s = Scene::new();
    for e in s.small_and_large() {
        let bytes = s.served(&e);
        s.serve(&e, &bytes[..bytes.len() - 8]);
        match s.fetch(&e).await {
            Err(NarError::Fetch { msg, .. }) => assert!(msg.contains("truncated"), "{msg}"),
            other => panic!("expected a fetch failure, got {other:?}"),
        }
        s.assert_nothing_staged(&e);
    }
}

#[tokio::test]
async fn a_missing_nar_is_a_fetch_failure() {
    let s = Scene::new();
    let e = s.entry("hello");
    std::fs::remove_file(s.cache.path().join(&e.url)).unwrap();
    match s.fetch(&e).await {
        Err(NarError::Fetch { msg, .. }) => assert_eq!(msg, "not found"),
        other => panic!("expected a fetch failure, got {other:?}"),
    }
}

/// An xz NAR: what the signed sizes and hashes say is checked on both
/// sides of the decompressor.
#[tokio::test]
async fn compressed_nars_are_checked_after_decompression_too() {
    let s = Scene::new();
    let (e, xz) = s.xz_entry("compressed content");
    s.serve(&e, &xz);
    assert_eq!(s.fetch(&e).await.unwrap(), e.file_size);
    std::fs::remove_file(s.staging.nar(&e)).unwrap();

    // FileSize and FileHash hold for the bytes served, the NAR inside does
    // not match its NarSize: a decompression bomb stops there.
    let small = Entry {
        nar_size: e.nar_size - 8,
        ..e.clone()
    };
    let msg = verify_msg(s.fetch(&small).await);
    assert!(msg.contains("NarSize"), "{msg}");

    // Trailing bytes after the compressed stream, counted in FileSize and
    // FileHash, are refused all the same.
    let mut padded = xz.clone();
    padded.extend_from_slice(b"trailer");
    let file_hash = Sha256Hash::digest(&padded);
    let trailing = Entry {
        url: nar_url(&file_hash, Compression::Xz),
        file_hash,
        file_size: padded.len() as u64,
        ..e.clone()
    };
    s.serve(&trailing, &padded);
    let msg = verify_msg(s.fetch(&trailing).await);
    assert!(msg.contains("trailing data"), "{msg}");
    s.assert_nothing_staged(&trailing);
}

/// A NAR's FileHash is checked before a decoder sees a byte of it, small
/// (read into memory) or large (spooled): bytes the publisher did not sign
/// never reach liblzma.
#[tokio::test]
async fn a_nar_reaches_the_decoder_only_once_its_file_hash_holds() {
    let s = Scene::new();
    let (small, xz) = s.xz_entry("compressed content");
    // Claimed xz, 1.5 MiB: what matters is that the decoder never runs.
    let large = Entry {
        file_size: 3 << 19,
        ..small.clone()
    };
    assert!(!spools(&small) && spools(&large));
    for (e, size) in [(small, xz.len()), (large, 3 << 19)] {
        // Not xz at all, of the signed size: a decoder would call it a
        // format error; the FileHash check refuses it first.
        s.serve(&e, &vec![b'!'; size]);
        let msg = verify_msg(s.fetch(&e).await);
        assert!(msg.starts_with("FileSize/FileHash mismatch"), "{msg}");
        s.assert_nothing_staged(&e);
    }
}

/// A large NAR is decoded only once all of it is here: while its download
/// stalls, it holds no decoder, and a small NAR is decoded meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_large_download_holds_no_decoder() {
    let s = Scene::new();
    let [small, large] = s.small_and_large();
    // The large NAR is served by a pipe that sends half of it, then waits.
    let (go_on, halfway, writer) = s.half_then_wait(&large);

    let slots = Arc::new(Slots::new(1));
    let stalled = {
        let (source, staging, e, slots) = (
            s.source.clone(),
            s.staging.clone(),
            large.clone(),
            slots.clone(),
        );
        tokio::spawn(async move {
            let ids: Arc<[Identity]> = Arc::new([]);
            let progress = Arc::new(AtomicU64::new(0));
            fetch_one(&source, &staging, &e, progress, &slots, &ids).await
        })
    };
    tokio::task::spawn_blocking(move || {
        halfway
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the large NAR's download never started")
    })
    .await
    .unwrap();
    // A guard against a hang, not a measurement: with the only decoder
    // held by the stalled download, this would never finish.
    let ids: Arc<[Identity]> = Arc::new([]);
    let progress = Arc::new(AtomicU64::new(0));
    let decoded = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        fetch_one(&s.source, &s.staging, &small, progress, &slots, &ids),
    )
    .await
    .expect("the small NAR waited for the stalled download's decoder");
    decoded.unwrap();
    assert!(s.staged(&small));

    go_on.send(()).unwrap();
    writer.join().unwrap();
    stalled.await.unwrap().unwrap();
    assert!(s.staged(&large));
    assert_eq!(s.leftovers(), 0, "the spooled file is gone");
}

/// A spooled NAR that cannot be read back is this host's failure (a local
/// error), not the publisher's bytes (a refusal).
#[test]
fn a_spool_that_cannot_be_read_back_is_a_local_error() {
    let s = Scene::new();
    let e = s.entry("content");
    let path = s.staging.nar_dir().join(".tmp-spool");
    std::fs::write(&path, s.served(&e)).unwrap();
    // Open for writing only: every read of it fails.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let spooled = tempfile::NamedTempFile::from_parts(
        file,
        tempfile::TempPath::try_from_path(&path).unwrap(),
    );
    let dest = s.staging.nar(&e);
    match decode_into(Input::Spooled(spooled), &e, &dest, &[]) {
        Err(Failure::Local(msg)) => assert!(msg.starts_with("reading "), "{msg}"),
        Err(Failure::Verify(msg)) => panic!("refused as if the bytes were wrong: {msg}"),
        Err(_) => panic!("another failure"),
        Ok(()) => panic!("decoded"),
    }
    s.assert_nothing_staged(&e);
}

/// A NAR that goes first (`Slots::first`) has the network to itself: the
/// others start only once its bytes are in, decoded or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_downloads_wait_for_the_bytes_of_a_nar_that_goes_first() {
    let s = Scene::new();
    let [small, large] = s.small_and_large();
    // The first NAR is served by a pipe that sends half of it, then waits.
    let (go_on, halfway, writer) = s.half_then_wait(&large);
    let slots = Arc::new(Slots::new(2).first([large.file_hash].into()));
    let fetch = |e: &Entry| {
        let (source, staging, e, slots) = (
            s.source.clone(),
            s.staging.clone(),
            e.clone(),
            slots.clone(),
        );
        tokio::spawn(async move {
            let ids: Arc<[Identity]> = Arc::new([]);
            let progress = Arc::new(AtomicU64::new(0));
            fetch_one(&source, &staging, &e, progress, &slots, &ids).await
        })
    };
    let first = fetch(&large);
    tokio::task::spawn_blocking(move || {
        halfway
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the first NAR's download never started")
    })
    .await
    .unwrap();
    let other = fetch(&small);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !other.is_finished() && !s.staged(&small),
        "another NAR was fetched while the first one's bytes were coming"
    );
    go_on.send(()).unwrap();
    writer.join().unwrap();
    first.await.unwrap().unwrap();
    let fetched = tokio::time::timeout(std::time::Duration::from_secs(60), other)
        .await
        .expect("the other NAR waited for good");
    fetched.unwrap().unwrap();
    assert!(s.staged(&small) && s.staged(&large));
}
