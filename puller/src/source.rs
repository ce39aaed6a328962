//! Where the agent reads its cache from, and writes its reports to: the
//! shared cache layer (`nixcast_cache`), under the names the agent's steps use.

pub use nixcast_cache::{
    error_chain, Cache as Source, FetchError, Fetched, HttpOptions, Validators,
};
