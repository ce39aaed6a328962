# NixOS module for the nixcast agent: `services.nixcast-pull`.
#
# A timer starts `nixcast-pull run` as a root oneshot service. Each run reads
# this host's signed pointer, fetches and verifies the missing store paths,
# imports them through the nix-daemon, sets /nix/var/nix/profiles/system and
# runs switch-to-configuration in a transient unit (systemd-run), so the
# switch is neither confined by this unit's sandbox nor killed when it
# restarts units.
#
# The tests evaluate this module under the real module system with nixpkgs'
# `lib` (integration/fixtures/eval-module.nix declares the NixOS options it
# sets), and integration/interop.sh runs its rendered units under a booted
# systemd 257.
{ config, lib, pkgs, ... }:
let
  inherit (lib) mkOption types;
  cfg = config.services.nixcast-pull;

  # ExecStart is not read by a shell: systemd unquotes it with its own rules
  # and expands `%` specifiers and `$VAR` in it. `lib.escapeShellArgs` is
  # therefore wrong here (a health check such as `curl -w '%{http_code}' …`
  # or one holding a `'` would be mangled or rejected). This is NixOS's own
  # `utils.escapeSystemdExecArg`: a JSON string is a valid systemd double-quoted
  # word, and `%%`/`$$` stand for a literal `%`/`$`.
  escapeExecArg = arg:
    builtins.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON arg);
  escapeExecArgs = args: builtins.concatStringsSep " " (map escapeExecArg args);

  # A path literal (`./fleet-1.pub`) is copied into the store, so that it
  # exists on the host; a string is a path on the host itself.
  keyFile = f: if builtins.isPath f then "${f}" else f;

  varLib = "/var/lib/";
  varLibLength = builtins.stringLength varLib;
  stateDirUnderVarLib =
    builtins.substring 0 varLibLength cfg.stateDir == varLib
    && builtins.stringLength cfg.stateDir > varLibLength;
  # StateDirectory= takes a name relative to /var/lib.
  stateDirectory = builtins.substring varLibLength
    (builtins.stringLength cfg.stateDir - varLibLength) cfg.stateDir;

  # systemd copies these files into this unit's own credentials directory
  # when it starts (LoadCredential=): root-only, on a ramfs, visible to this
  # service alone. The secrets stay out of the Nix store, the unit file and
  # the process environment. (The directory is $CREDENTIALS_DIRECTORY, which
  # systemd puts at /run/credentials/UNIT.)
  credentialsDir = "/run/credentials/nixcast-pull.service";
  credentials =
    lib.optionals (cfg.netrcFile != null) [ "netrc:${cfg.netrcFile}" ]
    ++ lib.optionals (cfg.environmentFile != null) [ "environment:${cfg.environmentFile}" ];
  inStore = f: f != null && builtins.substring 0 11 f == "/nix/store/";

  args = [
    "run"
    "--cache" cfg.cache
    "--host" cfg.host
    "--action" cfg.action
    "--state-dir" cfg.stateDir
    "--health-timeout" cfg.healthTimeout
  ]
  ++ lib.concatMap (k: [ "--trusted-key" k ]) cfg.trustedKeys
  ++ lib.concatMap (f: [ "--trusted-key-file" (keyFile f) ]) cfg.trustedKeyFiles
  ++ lib.concatMap (k: [ "--root-key" k ]) cfg.trustedRoots
  ++ lib.optionals (cfg.trustedRoots != [ ]) [ "--root-threshold" (toString cfg.rootThreshold) ]
  ++ lib.concatMap (f: [ "--identity" f ]) cfg.identityFiles
  ++ lib.concatMap (c: [ "--health-check" c ]) cfg.healthChecks
  ++ lib.optionals cfg.allowInsecureHttp [ "--allow-insecure-http" ]
  ++ lib.optionals (cfg.netrcFile != null) [ "--netrc-file" "${credentialsDir}/netrc" ]
  ++ lib.optionals (cfg.environmentFile != null) [ "--environment-file" "${credentialsDir}/environment" ]
  ++ lib.optionals (cfg.reportTo != null) ([ "--report-to" cfg.reportTo "--report-interval" cfg.reportInterval ]
    ++ lib.concatMap (r: [ "--report-recipient" r ]) cfg.reportRecipients)
  ++ lib.optionals cfg.allowReboot [ "--allow-reboot" ]
  ++ lib.optionals (cfg.rebootWindow != null) [ "--reboot-window" cfg.rebootWindow ]
  ++ lib.optionals (cfg.keepGenerations != null) [ "--keep-generations" (toString cfg.keepGenerations) ]
  # Watching, the agent exits after it applied a generation, and systemd
  # starts the new system's agent (the switch reloaded the unit).
  ++ lib.optionals cfg.watch [ "--watch" "--exit-after-apply" ]
  ++ cfg.extraArgs;

  # A report written to a directory on this host needs it writable in the
  # sandbox; `-`: a directory that does not exist yet does not stop the unit.
  reportDir =
    if cfg.reportTo == null then null
    else if lib.hasPrefix "file://" cfg.reportTo then lib.removePrefix "file://" cfg.reportTo
    else if lib.hasPrefix "/" cfg.reportTo then cfg.reportTo
    else null;
in
{
  options.services.nixcast-pull = {
    enable = lib.mkEnableOption "the nixcast pull agent (a timer that pulls and switches to this host's signed system)";

    package = mkOption {
      type = types.package;
      description = ''
        The nixcast package; its `bin/nixcast-pull` is run. The flake's
        `nixosModules.default` sets it to the flake's own package.
      '';
    };

    cache = mkOption {
      type = types.str;
      example = "https://cache.example.org";
      description = ''
        The cache to pull from: `https://…`, `file://DIR` or a directory
        (`http://` needs `allowInsecureHttp`).
      '';
    };

    host = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = lib.literalExpression "config.networking.hostName";
      description = "This host's name in the cache: its pointer is `hosts/HOST.json`.";
    };

    trustedKeys = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "fleet-1:WyM4+q4C6kFe/P1tQe2513YA16YFI+HkW+5UGka8FsY=" ];
      description = "Public keys (`name:base64`) whose signatures on pointers and narinfos are trusted.";
    };

    trustedKeyFiles = mkOption {
      type = types.listOf types.path;
      default = [ ];
      description = ''
        Files each holding a trusted public key. A path literal is copied
        into the Nix store (fine: it is a public key); a string names a file
        on the host.
      '';
    };

    trustedRoots = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "root-1:pU4P0dlNtZrWozA5G9EHHkJx0U3po7IA0dchJAE6fzo=" ];
      description = ''
        Root keys (`name:base64`, kept offline) instead of trustedKeys: the
        host trusts the signing keys of the newest key list
        (`nixcast keys sign`) that these roots, and then each list's own
        roots, signed, so that a signing key is rotated or revoked without
        touching the host.
      '';
    };

    rootThreshold = mkOption {
      type = types.ints.positive;
      default = 1;
      description = "How many of trustedRoots must sign the first key list this host accepts.";
    };

    identityFiles = mkOption {
      type = types.listOf types.str;
      default = [ "/etc/ssh/ssh_host_ed25519_key" ];
      example = [ "/etc/ssh/ssh_host_ed25519_key" "/run/keys/nixcast-age.txt" ];
      description = ''
        What opens this host's objects when its pointer is sealed: unencrypted
        OpenSSH ed25519 private keys (the host key, whose public half
        `ssh-keyscan -t ed25519` gives the publisher) or age identity files.
        Read only for a sealed pointer. Strings, not paths: a path literal
        would copy a secret key into the world-readable Nix store.
      '';
    };

    action = mkOption {
      type = types.enum [ "switch" "boot" ];
      default = "switch";
      description = ''
        `switch` activates the new system at once; `boot` only makes it the
        default for the next boot.
      '';
    };

    interval = mkOption {
      type = types.str;
      default = "*:0/5";
      example = "hourly";
      description = "When to check for a new system: a systemd calendar expression (systemd.time(7)).";
    };

    watch = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Keep the agent running and apply a release as soon as it is
        published: a long poll of this host's pointer against `nixcast
        serve` (elsewhere it polls every 5 minutes). The unit becomes a
        long-running service restarted when it exits; the timer stays and
        starts it again should it be down.
      '';
    };

    randomizedDelaySec = mkOption {
      type = types.either types.str types.int;
      default = "60s";
      description = "Random delay added to each run, so that a fleet does not poll the cache at once (the timer's RandomizedDelaySec=).";
    };

    healthChecks = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "systemctl is-active --quiet nginx.service" ];
      description = ''
        Commands run with `sh -c` after a successful switch, inside this
        service's sandbox; if one fails or outlives `healthTimeout`, the
        switch is rolled back. PATH holds Nix, systemd, bash, coreutils,
        findutils, grep and sed: call anything else by its store path
        (`''${pkgs.curl}/bin/curl`).
      '';
    };

    healthTimeout = mkOption {
      type = types.str;
      default = "60s";
      description = "How long each health check may take.";
    };

    allowInsecureHttp = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Allow an `http://` cache. Signatures still protect integrity, but
        anyone on the path sees the closure, which reveals the host's
        configuration.
      '';
    };

    netrcFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/nixcast-netrc";
      description = ''
        A netrc file on the host (Nix's `netrc-file` format: `machine HOST
        login USER password PASSWORD`) with the credentials for an HTTP
        cache behind basic auth, and for upstream caches. A string, not a
        path literal: it must not be copied into the Nix store, which every
        user can read. Handed to the agent as a systemd credential.
      '';
    };

    environmentFile = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "/run/secrets/nixcast-aws";
      description = ''
        A file on the host of `AWS_*` variables, one `KEY=VALUE` a line
        (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …),
        for a `cache` of the form `s3://BUCKET/PREFIX?endpoint=…&region=…`.
        Like `netrcFile`, a string outside the Nix store, handed over as a
        systemd credential.
      '';
    };

    reportTo = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "https://fleet.example.org";
      description = ''
        Where this host sends a signed report (`reports/HOST.json`) after a
        run that changed something, and at least every `reportInterval`:
        `https://…` (by PUT, e.g. `nixcast serve --accept-reports`), an
        `s3://…` bucket (credentials from `environmentFile`), `file://DIR`
        or a directory. Signed with the first SSH ed25519 key of
        `identityFiles`. A report that cannot be sent never fails the run.
      '';
    };

    reportInterval = mkOption {
      type = types.str;
      default = "1h";
      description = "A quiet host reports at least this often; three intervals without a report make it stale.";
    };

    reportRecipients = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p" ];
      description = ''
        Seal reports to these keys (`age1…` or `ssh-ed25519 …`, the
        operators' `*` recipients). Without them a sealed host's report
        carries no store path and no message.
      '';
    };

    allowReboot = mkOption {
      type = types.bool;
      default = false;
      description = ''
        When a new system's kernel, initrd or kernel modules differ from the
        booted system's (what `system.autoUpgrade` compares), install it with
        `boot` instead of `switch` and reboot, inside `rebootWindow`.
      '';
    };

    rebootWindow = mkOption {
      type = types.nullOr types.str;
      default = null;
      example = "02:00-05:00";
      description = ''
        Reboot only within this daily window of local time (`HH:MM-HH:MM`,
        may wrap midnight); outside it the reboot waits for a run inside it.
        `null`: reboot at once.
      '';
    };

    keepGenerations = mkOption {
      type = types.nullOr types.ints.positive;
      default = null;
      example = 5;
      description = ''
        After a successful switch, delete system profile generations beyond
        the last N (never the current or booted one) and the store paths
        only they held.
      '';
    };

    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/nixcast";
      description = "The agent's state (status, lock, staging cache); must lie under /var/lib/.";
    };

    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--jobs" "4" ];
      description = ''
        More arguments for `nixcast-pull run`. A path they make the agent
        write (`--metrics-file`, `--profile`) must be added to
        `systemd.services.nixcast-pull.serviceConfig.ReadWritePaths`.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = stateDirUnderVarLib;
        message = "services.nixcast-pull.stateDir must lie under /var/lib/ (it is a StateDirectory=), not ${cfg.stateDir}";
      }
      {
        assertion = (cfg.trustedKeys != [ ] || cfg.trustedKeyFiles != [ ]) != (cfg.trustedRoots != [ ]);
        message = "services.nixcast-pull needs trustedKeys or trustedKeyFiles (pinned signing keys), or trustedRoots (root keys of a key list), and not both";
      }
      {
        assertion = cfg.trustedRoots == [ ] || cfg.rootThreshold <= builtins.length cfg.trustedRoots;
        message = "services.nixcast-pull.rootThreshold is more than the number of trustedRoots";
      }
      {
        # The import goes through the nix-daemon (NIX_REMOTE below).
        assertion = config.nix.enable;
        message = "services.nixcast-pull imports through the nix-daemon: it needs nix.enable";
      }
      {
        assertion = !(inStore cfg.netrcFile) && !(inStore cfg.environmentFile);
        message = "services.nixcast-pull.netrcFile and environmentFile hold secrets: they must name files outside the Nix store, which every user can read";
      }
      {
        assertion = !(builtins.any inStore cfg.identityFiles);
        message = "services.nixcast-pull.identityFiles are private keys: they must name files outside the Nix store, which every user can read";
      }
      {
        assertion = cfg.rebootWindow == null || cfg.allowReboot;
        message = "services.nixcast-pull.rebootWindow is set, but allowReboot is not: the agent never reboots without it";
      }
      {
        assertion = cfg.host != "";
        message = "services.nixcast-pull.host is empty: set it, or networking.hostName";
      }
    ];

    systemd.services.nixcast-pull = {
      description = "nixcast: pull and switch to this host's signed NixOS system";
      # Every run fetches; the first one after boot must wait for the network.
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];

      # The switch this service runs may change or remove this very unit:
      # switch-to-configuration must neither restart it (which would kill the
      # run waiting for the switch) nor stop it when a new system no longer
      # has it. system.autoUpgrade's nixos-upgrade.service does the same.
      restartIfChanged = false;
      unitConfig.X-StopOnRemoval = false;

      # nix, nix-env and nix-store for the import and the profile; systemd-run
      # for the switch; bash because health checks run with `sh -c`.
      path = [ config.nix.package config.systemd.package pkgs.bash ];

      # Import through the nix-daemon, which runs outside this sandbox and
      # owns /nix/store and the database. Root with the local store would have
      # to remount the read-only /nix/store writable in a new mount namespace,
      # which ProtectSystem=, RestrictNamespaces= and the system call filter
      # below rightly forbid ("remounting /nix/store writable" fails). Root is
      # a trusted daemon user, so the daemon applies the agent's
      # `--option trusted-public-keys` and still checks the narinfo
      # signatures (tried: another key gives "lacks a valid signature").
      environment.NIX_REMOTE = "daemon";
      # glibc gives every thread that allocates a malloc arena of its own and
      # keeps what was freed there (an xz decoder's 8 MiB window, a NAR's
      # buffer): one arena holds the agent's peak nearer what it uses (bench,
      # 1000-path cold pull, decoders bounded to one per CPU: xz 55 -> 43 MiB
      # with two arenas against one, zstd 38 -> 34 MiB, time within noise).
      # A documented glibc tunable; the crate has no unsafe code, so no
      # mallopt().
      environment.MALLOC_ARENA_MAX = "1";

      serviceConfig = {
        # One run per timer activation; a timer does not start a second run
        # while one is active (the agent's lock covers manual runs).
        # Watching: one long-running agent, started again when it exits
        # (after each switch, to run the new system's agent) or fails.
        Type = if cfg.watch then "simple" else "oneshot";
        ExecStart = "${cfg.package}/bin/nixcast-pull ${escapeExecArgs args}";

        # A oneshot has no start timeout by default: a stalled run would keep
        # every later timer run from starting. The agent has its own stall
        # timeout per download; this bounds the whole run, switch included.
        # (If it fires, only the agent is killed: the switch's transient unit
        # goes on.)
        TimeoutStartSec = "45min";

        # systemd creates /var/lib/<name>, root-owned, and keeps it writable
        # under ProtectSystem=strict. 0700: it holds the staging cache, which
        # must stay root-only until Nix has imported it.
        StateDirectory = stateDirectory;
        StateDirectoryMode = "0700";
        # Whatever the agent creates (staged NARs, narinfos, the lock) is
        # root-only; it makes status.json 0644 itself. The switch does not
        # inherit this: PID 1 starts its transient unit with the defaults, so
        # /etc keeps its modes.
        UMask = "0077";

        # --- File system ---------------------------------------------------
        # The whole tree read-only. The agent writes only its state directory
        # and the system profile's links; the daemon writes the store; the
        # switch writes /etc, /boot and the rest from its transient unit,
        # which this sandbox does not confine. (That is why ProtectSystem= is
        # usable here at all, although systemd says it is not meant for
        # services that update the system.)
        ProtectSystem = "strict";
        # nix-env --set/--rollback/--delete-generations create and remove
        # /nix/var/nix/profiles/system-N-link and system.lock; without this
        # they fail with "Read-only file system" (the e2e test
        # module_sandbox_lets_the_agent_import_set_the_profile_and_switch
        # shows both).
        ReadWritePaths = [ "/nix/var/nix/profiles" ]
          ++ lib.optional (reportDir != null) "-${reportDir}";
        # The agent reads no home. Nix 2.8's nix-env stats ~/.nix-defexpr on
        # start; as root it gets "not found" in the inaccessible /root and
        # goes on (the same e2e test runs it so).
        ProtectHome = true;
        # Nothing outside sees or plants the agent's (or Nix's) temporary files.
        PrivateTmp = true;
        # The agent needs /dev/null and the like, no hardware; this also drops
        # CAP_MKNOD and CAP_SYS_RAWIO.
        PrivateDevices = true;

        # --- Kernel and host -------------------------------------------------
        # The switch may set sysctls, load modules, set the hostname or the
        # clock, but it runs in its own transient unit started by PID 1; the
        # agent itself does none of these.
        # /proc/sys, /sys read-only: the agent sets no kernel tunable.
        ProtectKernelTunables = true;
        # No module loading (drops CAP_SYS_MODULE).
        ProtectKernelModules = true;
        # No kernel log ring buffer (drops CAP_SYSLOG).
        ProtectKernelLogs = true;
        # cgroupfs read-only: systemd-run asks PID 1 for the switch's unit
        # over a socket; the agent writes no cgroup itself.
        ProtectControlGroups = true;
        # The agent only reads the clock (pointer expiry), never sets it.
        ProtectClock = true;
        # The agent never sets the hostname (its --host comes from here).
        ProtectHostname = true;

        # --- Network ---------------------------------------------------------
        # PrivateNetwork= is impossible: the agent fetches the cache.
        # AF_UNIX reaches the nix-daemon, systemd (systemd-run) and nscd;
        # AF_INET/AF_INET6 the cache. AF_NETLINK is left out: as root it would
        # reconfigure the network, and neither the agent nor Nix needs it (a
        # health check calling `ip` would).
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" ];
        # Cloud metadata services hand out credentials: no NAR URL (nor a
        # redirect) may reach them from this unit.
        IPAddressDeny = [ "169.254.169.254/32" "fd00:ec2::254/128" ];

        # --- Processes -------------------------------------------------------
        # No namespaces: the agent never builds (it imports with
        # substituters = "" and sets the profile only to valid paths), and
        # through the daemon it needs no private mount namespace to make the
        # store writable.
        RestrictNamespaces = true;
        # As root this changes little (root already holds what a setuid or
        # file-capability binary could give); it keeps anything the agent or
        # a health check runs from gaining more than the unit has, e.g. a
        # MAC transition. systemd-run is unaffected: PID 1 starts the switch.
        NoNewPrivileges = true;
        # The agent creates no setuid/setgid file (the daemon writes the
        # store, and NARs carry no such bits).
        RestrictSUIDSGID = true;
        # No realtime scheduling: a runaway realtime thread could starve the
        # host.
        RestrictRealtime = true;
        # No personality changes (those are for builds, which the agent never
        # runs).
        LockPersonality = true;
        # Only the native system call ABI: no 32-bit entry points around the
        # filter below.
        SystemCallArchitectures = "native";
        # Neither the agent (Rust, no JIT) nor Nix's client needs writable
        # executable memory; it makes exploiting the decompressors (liblzma,
        # zstd) harder. Health checks inherit it: one running a JIT (node,
        # java) needs `MemoryDenyWriteExecute = lib.mkForce false`.
        MemoryDenyWriteExecute = true;
        # What ordinary system services use. It leaves out @mount, @module,
        # @reboot, @swap, @clock, @debug, @raw-io and @cpu-emulation, none of
        # which the agent, Nix's client or systemd-run need.
        SystemCallFilter = [ "@system-service" ];
        # A denied call fails with EPERM, which the agent reports, rather than
        # killing it with SIGSYS.
        SystemCallErrorNumber = "EPERM";

        # --- Left out on purpose --------------------------------------------
        # CapabilityBoundingSet=: the agent's real power is being root towards
        # PID 1 (systemd-run starts anything, unconfined) and towards the
        # nix-daemon (a trusted user), both over AF_UNIX, which no capability
        # set limits; a compromised agent is root either way (only splitting
        # off an unprivileged fetcher process would change that). Dropping
        # CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH even breaks Nix 2.8's nix-env
        # under ProtectHome= (it aborts with "getting status of
        # /root/.nix-defexpr/channels: Permission denied"; tried). Nix's
        # client does not chown (the daemon does), and the options above
        # already drop the module, raw I/O, mknod, syslog and clock
        # capabilities.
        # ProtectProc=/ProcSubset=: hiding processes from root would only
        # confuse health checks (pgrep, systemctl status).
        # PrivateMounts=: the system call filter already refuses mount().
        # PrivateUsers=, DynamicUser=, User=: the import and the profile need
        # root (a trusted Nix user).
        # MemoryMax=: the agent bounds what it holds (a large NAR goes through a
        # file) and Nix's import streams every NAR; a limit would
        # only add a way for a large closure to fail.
      } // lib.optionalAttrs cfg.watch {
        Restart = "always";
        RestartSec = "5s";
      } // (if credentials == [ ] then { } else {
        # See credentialsDir above.
        LoadCredential = credentials;
      });
    };

    systemd.timers.nixcast-pull = {
      description = "nixcast: check for a new system";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnCalendar = cfg.interval;
        # A run missed while the host was off happens right after boot.
        Persistent = true;
        RandomizedDelaySec = cfg.randomizedDelaySec;
      };
    };
  };
}
