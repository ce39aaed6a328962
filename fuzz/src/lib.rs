//! What the fuzz targets share: a fixed signing key, so that inputs get past
//! signature checks and reach the parsers behind them.

use std::sync::LazyLock;

use nixcast_common::report::HostKey;
use nixcast_common::SecretKey;

/// A throwaway key made by `nixcast keygen --name fuzz-1` for the fuzzer
/// only. The seed envelopes in `seeds/pointer` are signed with it.
const KEY: &str = "fuzz-1:dxqYjHvzcEQziq1e6wqnDkW4M1Qe/muEiUDomayOWmylTg/R2U21mtajMDkb0QceQnHRTemjsgDR1yEkATp/Og==";

/// Parsed once: parsing derives the public half, which would otherwise cost
/// more than most fuzz inputs do.
pub static FUZZ_KEY: LazyLock<SecretKey> =
    LazyLock::new(|| SecretKey::parse(KEY).expect("the fuzz key parses"));

/// A throwaway SSH host key (`ssh-keygen -t ed25519 -N ''`) for host `web`,
/// for the fuzzer only: the seed envelopes in `seeds/report` are signed
/// with it.
const HOST_KEY_OPENSSH: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDY+rpezahdMFprfb6JZHwnSLwbkvt9LUeatNOEhTe2GwAAAIhkHOyZZBzs
mQAAAAtzc2gtZWQyNTUxOQAAACDY+rpezahdMFprfb6JZHwnSLwbkvt9LUeatNOEhTe2Gw
AAAEC4jHK5cHtUMVaHrybra0gTNtA7x4rPJhnKWX3UFaLWQ9j6ul7NqF0wWmt9volkfCdI
vBuS+30tR5q004SFN7YbAAAAA3dlYgEC
-----END OPENSSH PRIVATE KEY-----
";

pub static HOST_KEY: LazyLock<HostKey> = LazyLock::new(|| {
    HostKey::from_openssh(HOST_KEY_OPENSSH.as_bytes(), "fuzz").expect("the host key parses")
});
