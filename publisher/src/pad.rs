//! Padding of sealed objects, so that their sizes say little about what
//! they hold.
//!
//! A sealed NAR's length is its compressed length plus age's fixed
//! overhead; compared with public caches' `FileSize`s (or `xz` of known
//! paths) it would name the package. Every sealed object is padded to a
//! Padmé length (Nikitin et al., "Reducing Metadata Leakage from Encrypted
//! Files and Communication with PURBs", PETS 2019): a length `L` is
//! rounded up so that only its top `log2(log2(L)) + 1` bits are free, which
//! leaks O(log log L) bits and costs at most 11 % (less for larger objects).
//!
//! The padding lives *inside* the compressed stream, as parts every
//! decoder of the format reads and skips, so that agents of every version
//! (which refuse any byte after the stream) and Nix read it unchanged:
//! - zstd: empty blocks before the frame's last block (an empty raw block
//!   is three zero bytes, an empty RLE block four);
//! - xz: empty blocks (a block header with zero padding, an LZMA2 end
//!   marker, the check of no data) before the index, whose records and
//!   footer are written again.
//!
//! Manifests and manifest deltas are JSON: they are padded with trailing
//! newlines, which every JSON reader skips. NARs sealed without
//! compression (`--compression none`) have no container to pad in and are
//! not padded.

use std::io::{self, Write};

use nixcast_common::manifest::Compression;
use nixcast_common::pad::padme;

/// A writer between a compressor and the sealing, that pads the compressed
/// stream from inside when it finishes (see the module's text).
pub struct Padder<W: Write> {
    inner: W,
    kind: Kind,
    /// Bytes forwarded to `inner`.
    written: u64,
    /// Bytes held back: the part of the stream padding goes before.
    held: Vec<u8>,
}

enum Kind {
    /// Nothing to pad in: bytes pass through.
    None,
    Zstd(zstd_frame::Parser),
    Xz,
}

/// xz: the tail held back, long enough for the index and footer of the
/// one-block streams our encoder writes.
const XZ_TAIL: usize = 64 * 1024;

impl<W: Write> Padder<W> {
    pub fn new(compression: Compression, inner: W) -> Self {
        let kind = match compression {
            Compression::Xz => Kind::Xz,
            Compression::Zstd => Kind::Zstd(zstd_frame::Parser::default()),
            Compression::None => Kind::None,
        };
        Self {
            inner,
            kind,
            written: 0,
            held: Vec::new(),
        }
    }

    /// Writes the padding and the held-back end of the stream; returns the
    /// inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let len = self.written + self.held.len() as u64;
        let tail = std::mem::take(&mut self.held);
        let out = match &self.kind {
            Kind::None => tail,
            Kind::Zstd(p) => {
                if !p.at_end() {
                    return Err(bad("the zstd frame did not end"));
                }
                // Empty blocks take at least 6 bytes: too close, the next length.
                let to = match padme(len) - len {
                    1..6 => padme(len + 6),
                    _ => padme(len),
                };
                let mut out = zstd_frame::padding(to - len);
                out.extend_from_slice(&tail);
                out
            }
            Kind::Xz => xz::pad(&tail, len)?,
        };
        self.inner.write_all(&out)?;
        Ok(self.inner)
    }

    fn forward(&mut self, buf: &[u8]) -> io::Result<()> {
        self.inner.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }
}

impl<W: Write> Write for Padder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.kind {
            Kind::None => self.forward(buf)?,
            Kind::Zstd(p) => {
                // Up to the last block's header: forwarded; from it: held.
                p.feed(buf).map_err(bad)?;
                self.held.extend_from_slice(buf);
                let go = (p.safe() - self.written) as usize;
                let rest = self.held.split_off(go);
                let head = std::mem::replace(&mut self.held, rest);
                self.forward(&head)?;
            }
            Kind::Xz => {
                self.held.extend_from_slice(buf);
                if self.held.len() > 2 * XZ_TAIL {
                    let rest = self.held.split_off(self.held.len() - XZ_TAIL);
                    let head = std::mem::replace(&mut self.held, rest);
                    self.forward(&head)?;
                }
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Just enough of the zstd frame format (RFC 8878) to find the last block.
mod zstd_frame {
    /// Empty blocks adding up to `n` bytes (none for `n` < 6, which the
    /// caller's rounding makes rare and which then stays unpadded).
    pub fn padding(n: u64) -> Vec<u8> {
        // Empty raw block: header 0 (not last, raw, size 0). Empty RLE
        // block: header 2 (not last, RLE, size 0) and its byte.
        const RAW: [u8; 3] = [0, 0, 0];
        const RLE: [u8; 4] = [2, 0, 0, 0];
        if n < 6 {
            return Vec::new();
        }
        let rle = match n % 3 {
            0 => 0,
            1 => 1,
            _ => 2,
        };
        let raw = (n - 4 * rle) / 3;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..rle {
            out.extend_from_slice(&RLE);
        }
        for _ in 0..raw {
            out.extend_from_slice(&RAW);
        }
        out
    }

    /// Follows a frame as it is written, to tell how much of it comes
    /// before the last block's header (`safe`): bytes up to there can go
    /// on, and padding goes there.
    #[derive(Default)]
    pub struct Parser {
        /// Bytes read.
        pos: u64,
        safe: u64,
        /// Bytes of the current part still to pass, before the next header.
        skip: u64,
        /// The current header's bytes so far, and where it started.
        header: Vec<u8>,
        header_at: u64,
        stage: Stage,
        checksum: bool,
    }

    #[derive(Default, PartialEq, Eq, Clone, Copy)]
    enum Stage {
        #[default]
        FrameHeader,
        BlockHeader,
        /// Inside the last block or the checksum after it.
        Last,
    }

    impl Parser {
        pub fn at_end(&self) -> bool {
            self.stage == Stage::Last && self.skip == 0
        }

        /// How many bytes from the frame's start come before the last
        /// block's header (or before a header not yet complete).
        pub fn safe(&self) -> u64 {
            self.safe
        }

        pub fn feed(&mut self, buf: &[u8]) -> Result<(), String> {
            let mut i = 0;
            while i < buf.len() {
                if self.skip > 0 {
                    let n = self.skip.min((buf.len() - i) as u64);
                    self.skip -= n;
                    i += n as usize;
                    self.pos += n;
                    if self.stage != Stage::Last {
                        self.safe = self.pos;
                    }
                    continue;
                }
                let b = buf[i];
                i += 1;
                match self.stage {
                    Stage::Last => return Err("bytes after the zstd frame".to_owned()),
                    Stage::FrameHeader => {
                        self.header.push(b);
                        self.pos += 1;
                        self.safe = self.pos;
                        if frame_header_len(&self.header)? == Some(self.header.len()) {
                            self.checksum = self.header[4] & 0x04 != 0;
                            self.header.clear();
                            self.stage = Stage::BlockHeader;
                        }
                    }
                    Stage::BlockHeader => {
                        if self.header.is_empty() {
                            self.header_at = self.pos;
                        }
                        self.header.push(b);
                        self.pos += 1;
                        if self.header.len() == 3 {
                            self.block_header()?;
                        }
                    }
                }
            }
            Ok(())
        }

        fn block_header(&mut self) -> Result<(), String> {
            let h = &self.header;
            let h = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
            self.header.clear();
            let (last, kind, size) = (h & 1 == 1, (h >> 1) & 3, u64::from(h >> 3));
            self.skip = match kind {
                0 | 2 => size,
                1 => 1,
                _ => return Err("a reserved zstd block type".to_owned()),
            };
            if last {
                self.skip += if self.checksum { 4 } else { 0 };
                self.stage = Stage::Last;
                self.safe = self.header_at;
            } else {
                self.safe = self.pos;
            }
            Ok(())
        }
    }

    /// The frame header's length once enough of it is known.
    fn frame_header_len(h: &[u8]) -> Result<Option<usize>, String> {
        if h.len() < 5 {
            if h.len() == 4 && h != [0x28, 0xb5, 0x2f, 0xfd] {
                return Err("not a zstd frame".to_owned());
            }
            return Ok(None);
        }
        let fhd = h[4];
        let single_segment = fhd & 0x20 != 0;
        let dict = [0, 1, 2, 4][usize::from(fhd & 3)];
        let fcs = match fhd >> 6 {
            0 if single_segment => 1,
            0 => 0,
            1 => 2,
            2 => 4,
            _ => 8,
        };
        Ok(Some(5 + usize::from(!single_segment) + dict + fcs))
    }
}

/// The xz container (the .xz file format 1.2.1): blocks, index, footer.
mod xz {
    use std::io;

    use super::bad;

    const FOOTER: usize = 12;

    /// An index record: a block's unpadded and uncompressed sizes.
    type Record = (u64, u64);
    const HEADER_MIN: u64 = 128;
    const HEADER_MAX: u64 = 1024;

    /// The stream's end (`tail`, its last bytes) with empty blocks before
    /// its index, so that the whole stream is `padme(len)` long, rounded
    /// to xz's 4-byte alignment; unpadded when that is too close to `len`
    /// for a block.
    pub fn pad(tail: &[u8], len: u64) -> io::Result<Vec<u8>> {
        let (index_at, records, check) = parse_end(tail)?;
        let check_len = match check {
            0 => 0,
            1 => 4,
            4 => 8,
            10 => 32,
            _ => return Err(bad("an xz check type this padding does not know")),
        };
        let old_index = index_len(&records);
        if super::padme(len) == len {
            return Ok(tail.to_vec());
        }
        // At least one block's worth above `len`, then Padmé steps up
        // until the blocks and the index's growth fit exactly.
        let mut target = super::padme(len + HEADER_MIN + 16 + check_len).next_multiple_of(4);
        let mut plan = fit(target - len, &records, old_index, check_len);
        for _ in 0..8 {
            if plan.is_some() {
                break;
            }
            target = super::padme(target + 1).next_multiple_of(4);
            plan = fit(target - len, &records, old_index, check_len);
        }
        let headers = plan.ok_or_else(|| bad("no padding fits this xz stream"))?;
        let mut out = tail[..index_at].to_vec();
        let mut records = records;
        for h in headers {
            out.extend(empty_block(h, check_len, check));
            records.push((h + 1 + check_len, 0));
        }
        let index = index(&records);
        out.extend_from_slice(&index);
        let flags = [0, check];
        let backward = (index.len() as u32 / 4 - 1).to_le_bytes();
        let mut crc_input = backward.to_vec();
        crc_input.extend_from_slice(&flags);
        out.extend_from_slice(&crc32fast::hash(&crc_input).to_le_bytes());
        out.extend_from_slice(&crc_input);
        out.extend_from_slice(b"YZ");
        Ok(out)
    }

    /// Header sizes of empty blocks adding, with the index's growth, `extra` bytes.
    fn fit(extra: u64, records: &[Record], old_index: u64, check_len: u64) -> Option<Vec<u64>> {
        let block = |h: u64| h + 4 + check_len;
        let mut k = 1u64;
        loop {
            let mut grown = records.to_vec();
            grown.extend((0..k).map(|_| (HEADER_MIN + 1 + check_len, 0)));
            let blocks = extra.checked_sub(index_len(&grown) - old_index)?;
            if blocks < k * block(HEADER_MIN) {
                return None;
            }
            if blocks <= k * block(HEADER_MAX) {
                // Spread evenly, in 4-byte steps: every header between the bounds.
                let headers_total = blocks - k * (4 + check_len);
                let base = (headers_total / k) / 4 * 4;
                let mut left = headers_total - base * k;
                let headers = (0..k)
                    .map(|_| {
                        let more = left.min(HEADER_MAX - base);
                        left -= more;
                        base + more
                    })
                    .collect();
                return Some(headers);
            }
            k += 1;
        }
    }

    /// A block holding no data: header with zero padding (`size` bytes),
    /// an LZMA2 end marker, block padding, and the check of no bytes.
    fn empty_block(size: u64, check_len: u64, check: u8) -> Vec<u8> {
        let mut h = vec![(size / 4 - 1) as u8, 0x00, 0x21, 0x01, 0x00];
        h.resize(size as usize - 4, 0);
        let crc = crc32fast::hash(&h);
        h.extend_from_slice(&crc.to_le_bytes());
        h.extend_from_slice(&[0x00, 0, 0, 0]);
        if check == 10 {
            h.extend_from_slice(&nixcast_common::Sha256Hash::digest(b"").0);
        } else {
            h.resize(h.len() + check_len as usize, 0);
        }
        h
    }

    fn varint(mut n: u64, out: &mut Vec<u8>) {
        while n >= 0x80 {
            out.push((n as u8) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
    }

    fn index(records: &[Record]) -> Vec<u8> {
        let mut out = vec![0x00];
        varint(records.len() as u64, &mut out);
        for (unpadded, uncompressed) in records {
            varint(*unpadded, &mut out);
            varint(*uncompressed, &mut out);
        }
        while out.len() % 4 != 0 {
            out.push(0);
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn index_len(records: &[Record]) -> u64 {
        index(records).len() as u64
    }

    fn read_varint(b: &[u8], at: &mut usize) -> io::Result<u64> {
        let mut n = 0u64;
        for shift in (0..63).step_by(7) {
            let byte = *b.get(*at).ok_or_else(|| bad("a short xz index"))?;
            *at += 1;
            n |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(n);
            }
        }
        Err(bad("an xz index number too long"))
    }

    /// Where the index starts in `tail`, its records, and the check type.
    fn parse_end(tail: &[u8]) -> io::Result<(usize, Vec<Record>, u8)> {
        let n = tail.len();
        if n < FOOTER || &tail[n - 2..] != b"YZ" {
            return Err(bad("no xz stream footer"));
        }
        let footer = &tail[n - FOOTER..];
        let backward = u32::from_le_bytes(footer[4..8].try_into().expect("4 bytes"));
        let index_size = (u64::from(backward) + 1) * 4;
        let index_at = (n - FOOTER)
            .checked_sub(index_size as usize)
            .ok_or_else(|| bad("the xz index is longer than the tail held"))?;
        let index = &tail[index_at..n - FOOTER];
        if index[0] != 0 || index != self::index(&records_of(index)?) {
            return Err(bad("an xz index that does not read back"));
        }
        Ok((index_at, records_of(index)?, footer[9] & 0x0f))
    }

    fn records_of(index: &[u8]) -> io::Result<Vec<Record>> {
        let mut at = 1;
        let count = read_varint(index, &mut at)?;
        (0..count)
            .map(|_| Ok((read_varint(index, &mut at)?, read_varint(index, &mut at)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn compressed(c: Compression, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut plain = crate::compress::Encoder::new(c, Vec::new()).unwrap();
        plain.write_all(data).unwrap();
        let plain = plain.finish().unwrap();
        let mut padded = crate::compress::Encoder::new(c, Padder::new(c, Vec::new())).unwrap();
        // Odd-sized writes: headers split across them.
        for chunk in data.chunks(7919) {
            padded.write_all(chunk).unwrap();
        }
        let padded = padded.finish().unwrap().finish().unwrap();
        (plain, padded)
    }

    /// Decoded as the agent decodes (one stream or frame, nothing after it).
    fn decode(c: Compression, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest: &[u8] = bytes;
        match c {
            Compression::Xz => {
                let s = liblzma::stream::Stream::new_stream_decoder(u64::MAX, 0).unwrap();
                let mut d = liblzma::bufread::XzDecoder::new_stream(&mut rest, s);
                d.read_to_end(&mut out).unwrap();
            }
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(&mut rest)
                    .unwrap()
                    .single_frame();
                d.read_to_end(&mut out).unwrap();
            }
            Compression::None => out = bytes.to_vec(),
        }
        assert!(rest.is_empty(), "{} bytes after the stream", rest.len());
        out
    }

    #[test]
    fn padded_streams_decode_to_the_same_bytes_at_padme_lengths() {
        let mut data = Vec::new();
        let mut x = 1u32;
        for i in 0..300_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            data.push(if i % 3 == 0 { (x >> 16) as u8 } else { b'a' });
        }
        for c in [Compression::Xz, Compression::Zstd] {
            for len in [0, 1, 50, 5_000, 300_000] {
                let (plain, padded) = compressed(c, &data[..len]);
                assert_eq!(decode(c, &padded), &data[..len], "{c:?} {len}");
                assert!(padded.len() >= plain.len());
                let p = padded.len() as u64;
                let expected = padme(plain.len() as u64);
                assert!(
                    (p == plain.len() as u64 && len < 5_000) || p >= expected,
                    "{c:?} {len}: {} → {p}, Padmé {expected}",
                    plain.len()
                );
                assert!(
                    (p - plain.len() as u64) as f64 <= 0.12 * plain.len() as f64 + 1100.0,
                    "{c:?} {len}: {} → {p}",
                    plain.len()
                );
            }
        }
    }

    #[test]
    fn padded_xz_reads_back_with_the_xz_tool() {
        let (_, padded) = compressed(Compression::Xz, &vec![7u8; 100_000]);
        let mut child = std::process::Command::new("xz")
            .args(["-d", "-c", "--single-stream"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("xz (xz-utils) is installed");
        child.stdin.take().unwrap().write_all(&padded).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, vec![7u8; 100_000]);
    }
}
