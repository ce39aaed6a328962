//! The benchmark's verify floor with the agent's own decoders: the work any
//! verifier must do, and nothing more (not the agent's strict NAR parse, its
//! spool for large NARs, or its staging, unless `--stage`). Decompresses
//! each NAR file named on the command line (`.nar.xz` with liblzma, `.nar.zst`
//! with zstd, as the agent builds them), SHA-256ing the compressed bytes
//! (FileHash) and the decompressed ones (NarHash), one file after the other
//! on one thread.
//!
//! `decode-floor [--stage DIR] NAR…`: with `--stage`, each decoded NAR is
//! also written to a file in DIR, and the files are removed at the end, as
//! the agent stages verified NARs for Nix and removes them once imported.
//!
//! `integration/bench/run.sh` runs it in place of `xz -dc | openssl dgst`,
//! whose decoder (the system's xz) is not the one the agent links.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;

use nixcast_common::hash::HashingCounter;

fn main() -> io::Result<()> {
    let mut args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let stage = match args.first().and_then(|a| a.to_str()) {
        Some("--stage") if args.len() >= 2 => Some(args.drain(..2).nth(1).expect("checked")),
        _ => None,
    };
    let mut staged = Vec::new();
    let mut total = 0;
    for path in &args {
        // FileHash: the compressed bytes are hashed as they are read.
        let input = BufReader::with_capacity(1 << 16, HashingCounter::new(File::open(path)?));
        let name = path.to_string_lossy();
        let mut nar: Box<dyn Read> = if name.ends_with(".xz") {
            let stream = liblzma::stream::Stream::new_stream_decoder(
                u64::MAX,
                liblzma::stream::IGNORE_CHECK,
            )?;
            Box::new(liblzma::bufread::XzDecoder::new_stream(input, stream))
        } else if name.ends_with(".zst") {
            Box::new(zstd::stream::read::Decoder::with_buffer(input)?)
        } else {
            Box::new(input)
        };
        let out: Box<dyn Write> = match &stage {
            Some(dir) => {
                let file = dir.join(format!("{}.{}.nar", std::process::id(), staged.len()));
                let w = BufWriter::with_capacity(128 << 10, File::create(&file)?);
                staged.push(file);
                Box::new(w)
            }
            None => Box::new(io::sink()),
        };
        // Read in the agent's NAR reader's pieces (64 KiB), not io::copy's 8 KiB.
        let mut hashed = HashingCounter::new(out);
        let mut buf = vec![0; 64 << 10];
        loop {
            match nar.read(&mut buf)? {
                0 => break,
                n => hashed.write_all(&buf[..n])?,
            }
        }
        let (mut out, _, n) = hashed.finish();
        out.flush()?;
        total += n;
    }
    for file in staged {
        std::fs::remove_file(file)?;
    }
    eprintln!("{total} bytes decoded and hashed");
    Ok(())
}
