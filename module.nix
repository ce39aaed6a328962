# NixOS module for the nixcast agent (services.nixcast-pull).
# A stub for now: the service, timer and hardening come with the module issue.
{ config, lib, ... }:
{
  options.services.nixcast-pull.enable = lib.mkEnableOption "the nixcast pull agent";
}
