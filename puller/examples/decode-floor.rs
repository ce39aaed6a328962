//! The benchmark's verify floor with the agent's own decoders: decompresses
//! each NAR file named on the command line (`.nar.xz` with liblzma, `.nar.zst`
//! with zstd, as the agent builds them), SHA-256ing the compressed bytes
//! (FileHash) and the decompressed ones (NarHash), one file after the other
//! on one thread, writing nothing.
//!
//! `integration/bench/run.sh` runs it in place of `xz -dc | openssl dgst`,
//! whose decoder (the system's xz) is not the one the agent links.

use std::fs::File;
use std::io::{self, BufReader, Read};

use nixcast_common::hash::HashingCounter;

fn main() -> io::Result<()> {
    let mut total = 0;
    for path in std::env::args_os().skip(1) {
        // FileHash: the compressed bytes are hashed as they are read.
        let input = BufReader::with_capacity(1 << 16, HashingCounter::new(File::open(&path)?));
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
        let mut hashed = HashingCounter::new(io::sink());
        io::copy(&mut nar, &mut hashed)?;
        total += hashed.finish().2;
    }
    eprintln!("{total} bytes decoded and hashed");
    Ok(())
}
