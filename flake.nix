{
  description = "nixcast: deploy NixOS hosts by pull from a signed static Nix binary cache";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      # The agent drives switch-to-configuration and systemd: Linux only.
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
    in
    {
      packages = forAllSystems (pkgs: {
        default = pkgs.rustPlatform.buildRustPackage {
          pname = "nixcast";
          inherit (cargoToml.workspace.package) version;

          # Only what cargo reads, so that editing the docs or module.nix
          # does not rebuild the binaries. `integration` is a workspace
          # member, so its manifest must be there even though nothing of it
          # is built.
          src = lib.fileset.toSource {
            root = ./.;
            fileset = lib.fileset.unions [
              ./Cargo.toml
              ./Cargo.lock
              ./common
              ./cli
              ./cache
              ./publisher
              ./puller
              ./integration
            ];
          };
          cargoLock.lockFile = ./Cargo.lock;

          # Both binaries: `nixcast` (publisher) and `nixcast-pull` (agent).
          cargoBuildFlags = [ "-p" "nixcast" "-p" "nixcast-pull" ];
          # The unit tests only: the end-to-end tests (nixcast-integration)
          # need root, mount namespaces and a real Nix, which the build
          # sandbox does not give.
          cargoTestFlags = [ "-p" "nixcast-common" "-p" "nixcast-cli" "-p" "nixcast-cache" "-p" "nixcast" "-p" "nixcast-pull" ];

          # No native inputs but installShellFiles: liblzma-sys and zstd-sys
          # compile their bundled C sources with the stdenv's cc (liblzma-sys
          # looks for a system liblzma >= 5.8 through pkg-config first;
          # without pkg-config it builds its own), and rustls needs no OpenSSL.
          nativeBuildInputs = [ pkgs.installShellFiles ];

          # Shell completions and man pages, made by the binaries from their
          # own clap definitions (`completions SHELL`, the hidden `man --out
          # DIR`); skipped when cross-compiling, where they cannot run here.
          postInstall = lib.optionalString (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) ''
            for prog in nixcast nixcast-pull; do
              installShellCompletion --cmd "$prog" \
                --bash <("$out/bin/$prog" completions bash) \
                --zsh <("$out/bin/$prog" completions zsh) \
                --fish <("$out/bin/$prog" completions fish)
              "$out/bin/$prog" man --out man-pages
            done
            installManPage man-pages/*.1
          '';

          meta = {
            description = "Deploy NixOS hosts by pull from a signed static Nix binary cache";
            license = [ lib.licenses.mit lib.licenses.asl20 ];
            mainProgram = "nixcast";
            platforms = lib.platforms.linux;
          };
        };
      });

      # The module, with the package defaulting to this flake's build for
      # the host's platform. Only the host's own `lib` and `pkgs` are used at
      # module evaluation; this flake's nixpkgs is evaluated only when the
      # package is needed (and not at all if the host sets its own).
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./module.nix ];
        services.nixcast-pull.package =
          lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
    };
}
