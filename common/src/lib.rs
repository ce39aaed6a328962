//! Nix's formats and nixcast's own, as a pure library: no network, no
//! processes, no async. Everything here parses from bytes or `Read` and writes
//! to `String` or `Write`.
//!
//! - [`nixbase32`], [`hash`], [`store_path`]: the names Nix gives things;
//! - [`keys`]: Nix's `name:base64` ed25519 keys and signatures;
//! - [`keylist`]: the signing keys a fleet trusts, signed by offline roots;
//! - [`narinfo`]: `<hash>.narinfo` files and their signed fingerprint;
//! - [`nar`]: the NAR archive format, a writer from a directory and a strict reader;
//! - [`layout`]: where each object lives in a cache;
//! - [`manifest`]: the closure of a host in one file;
//! - [`pointer`]: the signed DSSE envelope naming what a host should run;
//! - [`nardelta`]: the signed index of a generation's NAR deltas against the last;
//! - [`pinned`]: a manifest held to the pin of a verified pointer;
//! - [`report`]: a host's signed report of what its agent last did;
//! - [`enroll`]: the token that invites a host, and the request it answers with;
//! - [`seal`]: age encryption of a sealed host's objects, recipients and identities.

pub mod enroll;
pub mod hash;
pub mod keylist;
pub mod keys;
pub mod layout;
pub mod manifest;
pub mod nar;
pub mod nardelta;
pub mod narinfo;
pub mod nixbase32;
pub mod pad;
pub mod pinned;
pub mod pointer;
pub mod report;
pub mod seal;
pub mod store_path;

pub use hash::Sha256Hash;
pub use keys::{PublicKey, SecretKey, Signature};
pub use store_path::StorePath;
