//! `nixcast-pull rollback`: back to the previous system generation by hand
//! (`run::rollback_by_hand`), with the real store and switch.

use std::path::PathBuf;

use super::Failure;
use crate::activate::Action;
use crate::{host, run, state};

#[derive(clap::Args)]
pub struct Args {
    #[arg(
        long,
        default_value = "/nix/var/nix/profiles/system",
        env = "NIXCAST_PROFILE"
    )]
    profile: PathBuf,
    #[arg(long, env = "NIXCAST_STATE_DIR", default_value = "/var/lib/nixcast")]
    state_dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Action::Switch, env = "NIXCAST_ACTION")]
    action: Action,
}

pub fn rollback(a: &Args) -> Result<(), Failure> {
    let state = state::StateDir::new(&a.state_dir);
    let store = host::NixStore::new(state.children());
    let switch = host::Switch::new(state.children());
    match run::rollback_by_hand(&store, &switch, &a.profile, &state, a.action) {
        Ok(msg) => {
            println!("{msg}");
            Ok(())
        }
        Err(e) => Err(Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }),
    }
}
