//! Shared pieces: building the binaries and fixtures, fresh stores, a server.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/fixture.nix");

/// Builds the two binaries once per test run, so a test never runs stale ones.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        require("nix-store", "apt-get install -y nix-bin");
        require("unshare", "apt-get install -y util-linux");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .args(["build", "-q", "-p", "nixcast", "-p", "nixcast-pull"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo runs");
        assert!(st.success(), "building the binaries failed");
        // target/debug/deps/e2e-… → target/debug
        let exe = std::env::current_exe().unwrap();
        exe.parent().unwrap().parent().unwrap().to_owned()
    })
}

fn require(cmd: &str, install: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        found,
        "{cmd} is missing: these tests need it; install it with `{install}`"
    );
}

pub fn nixcast() -> Command {
    Command::new(bin_dir().join("nixcast"))
}

pub fn nixcast_pull_path() -> PathBuf {
    bin_dir().join("nixcast-pull")
}

/// Runs a command, panicking with its output unless it succeeds.
pub fn ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Options of the stand-in system of `fixtures/fixture.nix`.
#[derive(Clone)]
pub struct Fixture {
    pub host: &'static str,
    pub version: &'static str,
    pub n: u32,
    pub switch_exit: u32,
    /// Size in bytes of the shared library's random file (default 64 KiB).
    pub big: u64,
    /// Seconds the switch sleeps after logging "begin ACTION" (0: no pause).
    pub switch_sleep: u32,
    /// A stand-in kernel: kernel, initrd and kernel-modules links ("": none).
    pub kernel: &'static str,
}

impl Default for Fixture {
    fn default() -> Self {
        Self {
            host: "foobar",
            version: "1",
            n: 3,
            switch_exit: 0,
            big: 0,
            switch_sleep: 0,
            kernel: "",
        }
    }
}

impl Fixture {
    /// Builds it in the machine's own store (the "trusted machine") and returns the path.
    pub fn build(&self) -> String {
        let mut cmd = Command::new("nix-build");
        if !self.kernel.is_empty() {
            cmd.args(["--argstr", "kernel", self.kernel]);
        }
        if self.switch_sleep > 0 {
            cmd.args(["--arg", "switchSleep", &self.switch_sleep.to_string()]);
        }
        let out = ok(cmd
            .arg(FIXTURE)
            .args(["--no-out-link", "--option", "sandbox", "false"])
            .args(["--argstr", "host", self.host])
            .args(["--argstr", "version", self.version])
            .args(["--arg", "n", &self.n.to_string()])
            .args(["--arg", "switchExit", &self.switch_exit.to_string()])
            .args(["--arg", "big", &self.big.to_string()]));
        stdout(&out).trim().to_owned()
    }
}

pub fn closure(path: &str) -> Vec<String> {
    let out = ok(Command::new("nix-store").args(["-qR", path]));
    stdout(&out).lines().map(str::to_owned).collect()
}

/// A key pair made by `nixcast keygen`: the secret file and the public key text.
pub struct Keys {
    pub secret: PathBuf,
    pub public_text: String,
}

pub fn keygen(dir: &Path, name: &str) -> Keys {
    let secret = dir.join(format!("{name}.sec"));
    let public = dir.join(format!("{name}.pub"));
    ok(nixcast()
        .args(["keygen", "--name", name, "--secret-key-file"])
        .arg(&secret)
        .arg("--public-key-file")
        .arg(&public));
    let public_text = std::fs::read_to_string(&public).unwrap();
    Keys {
        secret,
        public_text,
    }
}

/// A work directory, the path of a cache in it, and a key pair `fleet-1`.
pub fn scene() -> (tempfile::TempDir, PathBuf, Keys) {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let keys = keygen(work.path(), "fleet-1");
    (work, cache, keys)
}

pub fn publish(cache: &Path, host: &str, path: &str, keys: &Keys, extra: &[&str]) -> Output {
    ok(nixcast()
        .args(["publish", "--host", host, "--path", path, "--cache"])
        .arg(cache)
        .arg("--secret-key-file")
        .arg(&keys.secret)
        .args(extra))
}

/// Files under `dir/sub`, by name.
pub fn files(dir: &Path, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join(sub))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A fresh machine: its own empty /nix in a private mount namespace, and a
/// state directory inside it.
pub struct Vm {
    pub dir: tempfile::TempDir,
}

impl Vm {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nixcast-vm-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("nix")).unwrap();
        Vm { dir }
    }

    /// The VM's /nix as seen from outside.
    pub fn nix(&self) -> PathBuf {
        self.dir.path().join("nix")
    }

    /// A command run inside the VM (program and arguments, no shell quoting needed).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg("mount --bind \"$0\" /nix && exec \"$@\"")
            .arg(self.nix())
            .args(args)
            .env("NIX_REMOTE", "local")
            .env_remove("NIX_PATH");
        c
    }

    /// `nixcast-pull ARGS…` inside the VM.
    pub fn agent(&self, args: &[&str]) -> Command {
        let bin = nixcast_pull_path();
        let mut all = vec![bin.to_str().unwrap()];
        all.extend_from_slice(args);
        self.cmd(&all)
    }

    /// `nix copy --from URL PATH` inside the VM, trusting `public`, with a
    /// fresh narinfo cache (Nix's ~/.cache/nix is shared by every "VM" here).
    pub fn nix_copy_from(&self, url: &str, public: &str, path: &str) -> Output {
        let nix_cache = tempfile::tempdir().unwrap();
        self.cmd(&[
            "nix",
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--from",
            url,
            "--option",
            "substituters",
            "",
            "--option",
            "trusted-public-keys",
            public,
            path,
        ])
        .env("XDG_CACHE_HOME", nix_cache.path())
        .output()
        .unwrap()
    }

    /// `nixcast-pull run` inside the VM, with its state in the VM's /nix/var/nixcast.
    pub fn pull(&self, cache: &str, keys: &Keys, extra: &[&str]) -> Output {
        self.pull_host(cache, "foobar", keys, extra)
    }

    /// `pull` for another host than foobar.
    pub fn pull_host(&self, cache: &str, host: &str, keys: &Keys, extra: &[&str]) -> Output {
        let bin = nixcast_pull_path();
        self.cmd(&run_args(&bin, cache, host, keys, extra))
            .output()
            .unwrap()
    }

    /// `pull`, after `setup` (a shell command) in the VM's namespace.
    pub fn pull_after(&self, setup: &str, cache: &str, keys: &Keys, extra: &[&str]) -> Output {
        let bin = nixcast_pull_path();
        let script = format!("{setup} && exec \"$0\" \"$@\"");
        let mut args = vec!["sh", "-c", &script];
        args.extend(run_args(&bin, cache, "foobar", keys, extra));
        self.cmd(&args).output().unwrap()
    }

    pub fn valid<S: AsRef<str>>(&self, paths: &[S]) -> bool {
        let mut args = vec!["nix-store", "--check-validity", "--print-invalid"];
        args.extend(paths.iter().map(AsRef::as_ref));
        let out = ok(&mut self.cmd(&args));
        stdout(&out).trim().is_empty()
    }

    /// Lines the stand-in's switch-to-configuration appended: "ACTION PATH".
    pub fn switch_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.nix().join("var/nixcast-test-switch.log"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    pub fn profile_link(&self, name: &str) -> Option<String> {
        std::fs::read_link(self.nix().join("var/nix/profiles").join(name))
            .ok()
            .map(|p| p.to_string_lossy().into_owned())
    }

    pub fn status(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.nix().join("var/nixcast/status.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }
}

/// `nixcast serve` on a free loopback port, with each request it logs.
pub struct Server {
    child: Child,
    pub url: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(dir: &Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// `start` with more arguments to `nixcast serve`.
    pub fn start_with(dir: &Path, extra: &[&std::ffi::OsStr]) -> Self {
        Self::start_listening(dir, "127.0.0.1:0", extra)
    }

    /// `start` on a given address (`127.0.0.1:PORT`: a server started again).
    pub fn start_listening(dir: &Path, listen: &str, extra: &[&std::ffi::OsStr]) -> Self {
        let mut child = nixcast()
            .args(["serve", "--cache"])
            .arg(dir)
            .args(["--listen", listen])
            .args(extra)
            .env("NIXCAST_LOG", "nixcast=debug")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let first = lines.next().expect("serve prints its address").unwrap();
        let url = first
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no address in {first:?}"))
            .to_owned();
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(l);
            }
        });
        Server { child, url, log }
    }

    /// Request paths served since the last call (from the server's log lines).
    pub fn take_requests(&self) -> Vec<String> {
        // The log thread may lag the response by a moment.
        std::thread::sleep(std::time::Duration::from_millis(200));
        let lines = std::mem::take(&mut *self.log.lock().unwrap());
        lines
            .iter()
            .filter(|l| l.contains("method="))
            .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("path=")))
            .map(|w| w.trim_start_matches("path=").trim_matches('"').to_owned())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn ok_output(out: Output) -> Output {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// An SSH host key made by `ssh-keygen`: (private key file, public key line).
pub fn ssh_key(dir: &Path, name: &str) -> (PathBuf, String) {
    let f = dir.join(name);
    ok(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&f));
    let public = std::fs::read_to_string(f.with_extension("pub")).unwrap();
    (f, public.trim().to_owned())
}

/// Writes `paths` (and their closures) to a cache the way Nix itself does:
/// `nix copy --to file://DIR?compression=xz`, signed with `keys`.
pub fn nix_copy_to<S: AsRef<std::ffi::OsStr>>(dir: &Path, keys: &Keys, paths: &[S]) {
    ok(Command::new("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
        ])
        .arg(format!(
            "file://{}?compression=xz&secret-key={}",
            dir.display(),
            keys.secret.display()
        ))
        .args(paths));
}

/// `nixcast-pull run` of `host` from `cache`, trusting `keys`, with the
/// VM's state directory, then `extra`.
fn run_args<'a>(
    bin: &'a std::path::Path,
    cache: &'a str,
    host: &'a str,
    keys: &'a Keys,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        bin.to_str().unwrap(),
        "run",
        "--cache",
        cache,
        "--host",
        host,
        "--trusted-key",
        keys.public_text.as_str(),
        "--state-dir",
        "/nix/var/nixcast",
        "--allow-insecure-http",
    ];
    args.extend_from_slice(extra);
    args
}
