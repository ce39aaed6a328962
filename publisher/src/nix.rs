//! What the publisher asks of Nix, through its CLI. What a publish needs of
//! the local store (a closure with its metadata, the files to dump as each
//! path's NAR) is the `Store` trait: `Nix` is the real one, and unit tests
//! publish from a fake (`testing.rs`) without Nix.
//!
//! The closure and its metadata come from `nix-store --query --requisites` and
//! `nix-store --dump-db PATHS…`: two commands whatever the closure's size,
//! whose output has not changed from Nix 2.3 to today (unlike
//! `nix path-info --json`, whose shape changed in Nix 2.19, 2.23 and 2.33).
//! `--dump-db` prints, per path:
//!
//! ```text
//! /nix/store/…-pkg-1        path
//! d010738d…                 narHash, base16, no algorithm prefix
//! 3144                      narSize
//! /nix/store/…-pkg-1.drv    deriver, or an empty line
//! 1                         number of references
//! /nix/store/…-base-lib     references, one per line
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use nixcast_common::narinfo::NarInfo;
use nixcast_common::{Sha256Hash, StorePath};

/// What Nix's database says about one valid path.
#[derive(Debug, Clone)]
pub struct PathInfo {
    pub path: StorePath,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
}

impl PathInfo {
    /// Whether a narinfo describes this path's content: the same NarHash,
    /// NarSize and references (in any order). Its signatures and where its
    /// NAR is are the caller's to judge.
    pub fn described_by(&self, ni: &NarInfo) -> bool {
        let mut ours = self.references.clone();
        ours.sort();
        let mut theirs = ni.references.clone();
        theirs.sort();
        ni.store_path == self.path
            && ni.nar_hash == self.nar_hash
            && ni.nar_size == self.nar_size
            && ours == theirs
    }
}

/// What a publish asks of the local store.
pub trait Store: Sync {
    /// The closure of `top`, each path with what the store's database says
    /// of it (the NarHash and NarSize its dump must match).
    fn closure(&self, top: &StorePath) -> Result<Vec<PathInfo>>;

    /// Where the files of a valid path are, to be dumped as its NAR.
    fn files(&self, path: &StorePath) -> PathBuf;
}

/// The local Nix store: its database through Nix's commands, its files
/// where the store path says.
pub struct Nix;

impl Store for Nix {
    fn closure(&self, top: &StorePath) -> Result<Vec<PathInfo>> {
        closure(top)
    }

    fn files(&self, path: &StorePath) -> PathBuf {
        PathBuf::from(path.to_string())
    }
}

/// Paths per `--dump-db` call: keeps each command line far below ARG_MAX.
const DUMP_DB_CHUNK: usize = 4000;

fn run(cmd: &mut Command) -> Result<String> {
    nixcast_cli::command::run(cmd, Stdio::null())
}

/// Resolves a path given by the user (a store path or a symlink to one, such as `./result`).
pub fn resolve_store_path(p: &Path) -> Result<StorePath> {
    let real =
        std::fs::canonicalize(p).with_context(|| format!("cannot resolve {}", p.display()))?;
    let s = real
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", real.display()))?;
    StorePath::from_absolute(s).with_context(|| format!("{} is not a store path", p.display()))
}

/// Builds `REF#nixosConfigurations.HOST.config.system.build.toplevel` and returns its output.
pub fn build_flake(flake: &str, host: &str) -> Result<StorePath> {
    build(&format!(
        "{flake}#nixosConfigurations.\"{host}\".config.system.build.toplevel"
    ))
}

/// Builds one installable (`REF#ATTR`) and returns its output.
pub fn build(attr: &str) -> Result<StorePath> {
    tracing::info!(%attr, "building");
    let mut cmd = Command::new("nix");
    cmd.args(FLAKES)
        .args(["build", "--no-link", "--json"])
        .arg(attr);
    // Build logs go to the user's terminal, not into our captured stderr.
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run nix build: is Nix installed?")?;
    if !out.status.success() {
        bail!("nix build {attr} failed ({})", out.status);
    }
    parse_build_json(&out.stdout).with_context(|| format!("reading the output of nix build {attr}"))
}

const FLAKES: [&str; 2] = ["--extra-experimental-features", "nix-command flakes"];

/// Every attribute of `REF#nixosConfigurations`.
pub fn flake_hosts(flake: &str) -> Result<Vec<String>> {
    let out = run(Command::new("nix")
        .args(FLAKES)
        .args(["eval", "--json", "--apply", "builtins.attrNames"])
        .arg(format!("{flake}#nixosConfigurations")))?;
    let hosts: Vec<String> = serde_json::from_str(&out).context("reading the host names")?;
    anyhow::ensure!(!hosts.is_empty(), "{flake} has no nixosConfigurations");
    Ok(hosts)
}

/// Builds several hosts in one `nix build` (shared paths are built once).
/// When that fails, each host is built on its own so that one broken host
/// does not stop the others.
pub fn build_flake_hosts(flake: &str, hosts: &[String]) -> Vec<(String, Result<StorePath>)> {
    let attr =
        |h: &str| format!("{flake}#nixosConfigurations.\"{h}\".config.system.build.toplevel");
    if hosts.len() > 1 {
        let mut cmd = Command::new("nix");
        cmd.args(FLAKES)
            .args(["build", "--no-link", "--json", "--keep-going"])
            .args(hosts.iter().map(|h| attr(h)))
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        if let Ok(out) = cmd.output() {
            if out.status.success() {
                if let Ok(paths) = parse_build_json_all(&out.stdout) {
                    if paths.len() == hosts.len() {
                        return hosts
                            .iter()
                            .cloned()
                            .zip(paths.into_iter().map(Ok))
                            .collect();
                    }
                }
            }
        }
    }
    hosts
        .iter()
        .map(|h| (h.clone(), build_flake(flake, h)))
        .collect()
}

/// `[{"drvPath": …, "outputs": {"out": "/nix/store/…"}}]`, the same from Nix 2.4 to today.
fn parse_build_json(stdout: &[u8]) -> Result<StorePath> {
    let built = parse_build_json_all(stdout)?;
    let [one] = built.as_slice() else {
        bail!("expected one built derivation, got {}", built.len());
    };
    Ok(one.clone())
}

/// The `out` path of each installable, in the order they were given.
fn parse_build_json_all(stdout: &[u8]) -> Result<Vec<StorePath>> {
    #[derive(serde::Deserialize)]
    struct Built {
        outputs: BTreeMap<String, String>,
    }
    let built: Vec<Built> = serde_json::from_slice(stdout)?;
    built
        .iter()
        .map(|b| {
            Ok(StorePath::from_absolute(
                b.outputs.get("out").context("no output named out")?,
            )?)
        })
        .collect()
}

/// The closure of `top` with each path's metadata, in two kinds of Nix call.
pub fn closure(top: &StorePath) -> Result<Vec<PathInfo>> {
    let listed = run(Command::new("nix-store")
        .args(["--query", "--requisites"])
        .arg(top.to_string()))?;
    let paths: Vec<&str> = listed.lines().filter(|l| !l.is_empty()).collect();
    let mut infos = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(DUMP_DB_CHUNK) {
        let out = run(Command::new("nix-store").arg("--dump-db").args(chunk))?;
        infos.extend(parse_dump_db(&out)?);
    }
    if infos.len() != paths.len() {
        bail!(
            "nix-store --dump-db described {} paths, expected {}",
            infos.len(),
            paths.len()
        );
    }
    Ok(infos)
}

fn parse_dump_db(text: &str) -> Result<Vec<PathInfo>> {
    let mut lines = text.lines();
    let mut out = Vec::new();
    while let Some(path) = lines.next() {
        let mut next = |what: &str| {
            lines.next().with_context(|| {
                format!("nix-store --dump-db output ends before the {what} of {path}")
            })
        };
        let path = StorePath::from_absolute(path)?;
        let nar_hash = Sha256Hash::parse(&format!("sha256:{}", next("narHash")?))?;
        let nar_size = next("narSize")?.parse().context("narSize")?;
        let deriver = match next("deriver")? {
            "" => None,
            d => Some(StorePath::from_absolute(d)?),
        };
        let n: usize = next("reference count")?
            .parse()
            .context("reference count")?;
        let references = (0..n)
            .map(|_| Ok(StorePath::from_absolute(next("references")?)?))
            .collect::<Result<_>>()?;
        out.push(PathInfo {
            path,
            nar_hash,
            nar_size,
            references,
            deriver,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dump_db() {
        let text = "/nix/store/7lvcvyx8vkgwf8im6wmm2vlngh1wvdka-pkg-1\n\
d010738d49512ba8dd42fdae0efc6a8792504a21441f5ab6cb48dd9c685ed088\n3144\n\
/nix/store/apwk8miky6qci2l2j631iwxi6a5ns7wk-pkg-1.drv\n1\n\
/nix/store/28m3cfvkwlg7bj6rdwmmm5jzqmbbjiq9-base-lib\n\
/nix/store/28m3cfvkwlg7bj6rdwmmm5jzqmbbjiq9-base-lib\n\
3d31c13133b6502d66b5bfa6e4ebc8cedbe4af82e2b48586297d096c18b1c6b3\n73648\n\n0\n";
        let infos = parse_dump_db(text).unwrap();
        assert_eq!(infos.len(), 2);
        assert_eq!(infos[0].nar_size, 3144);
        assert_eq!(infos[0].references, vec![infos[1].path.clone()]);
        assert_eq!(infos[1].deriver, None);
        assert_eq!(
            infos[0].nar_hash.to_hex(),
            "d010738d49512ba8dd42fdae0efc6a8792504a21441f5ab6cb48dd9c685ed088"
        );
        assert!(parse_dump_db("/nix/store/7lvcvyx8vkgwf8im6wmm2vlngh1wvdka-pkg-1\nabc\n").is_err());
    }

    #[test]
    fn a_narinfo_describes_the_same_content_whatever_its_reference_order() {
        let text = "/nix/store/7lvcvyx8vkgwf8im6wmm2vlngh1wvdka-pkg-1\n\
d010738d49512ba8dd42fdae0efc6a8792504a21441f5ab6cb48dd9c685ed088\n3144\n\n2\n\
/nix/store/28m3cfvkwlg7bj6rdwmmm5jzqmbbjiq9-base-lib\n\
/nix/store/7lvcvyx8vkgwf8im6wmm2vlngh1wvdka-pkg-1\n";
        let info = parse_dump_db(text).unwrap().remove(0);
        let ni = |refs: &str, size: u64| {
            NarInfo::parse(&format!(
                "StorePath: {}\nURL: nar/x.nar\nCompression: none\nNarHash: {}\n\
                 NarSize: {size}\nReferences: {refs}\n",
                info.path, info.nar_hash
            ))
            .unwrap()
        };
        let refs =
            "7lvcvyx8vkgwf8im6wmm2vlngh1wvdka-pkg-1 28m3cfvkwlg7bj6rdwmmm5jzqmbbjiq9-base-lib";
        assert!(info.described_by(&ni(refs, 3144)));
        assert!(!info.described_by(&ni(refs, 3145)));
        assert!(!info.described_by(&ni("7lvcvyx8vkgwf8im6wmm2vlngh1wvdka-pkg-1", 3144)));
    }

    #[test]
    fn parses_build_json() {
        let j = br#"[{"drvPath":"/nix/store/qr33qhpk3k54qb9mhbiah80qqy4rwh5z-x.drv","outputs":{"out":"/nix/store/c1axyhiz8rhvzg3xn9lspz4qafyy0z9y-x"}}]"#;
        assert_eq!(parse_build_json(j).unwrap().name(), "x");
        assert!(parse_build_json(b"[]").is_err());
    }
}
