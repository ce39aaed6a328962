//! End-to-end tests: the real `nixcast` and `nixcast-pull` binaries against
//! real Nix, `nixcast serve` on loopback, and a fresh Nix store per "VM"
//! (a private mount namespace with an empty directory bound on /nix).
//!
//! Needs root (for unshare and mount) and Nix (`apt-get install -y nix-bin`);
//! without them the tests fail and say so, they never skip.

mod bundle;
mod canary;
mod delta;
mod docs;
mod enroll;
mod fleet;
mod fleet_host;
mod gc;
mod hardening;
mod harness;
mod keys;
mod module;
mod private;
mod publish;
mod pull;
mod recovery;
mod retire;
mod s3;
mod safety;
mod sealed;
mod serve;
mod upstream;
mod watch;
