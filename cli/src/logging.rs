//! Logging on standard error: `--log-format text|json` (or
//! `NIXCAST_LOG_FORMAT`), filtered by `NIXCAST_LOG` (tracing's
//! `EnvFilter` syntax, e.g. `debug` or `nixcast=debug`).

use clap::ValueEnum;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The flag, the same in both programs (flattened into each one's `Cli`).
#[derive(clap::Args, Debug)]
pub struct LogArgs {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "NIXCAST_LOG_FORMAT")]
    pub log_format: LogFormat,
}

/// How text logs are written; JSON goes to standard error as it is (JSON
/// escapes every control character itself).
pub struct Text<W> {
    pub writer: W,
    pub ansi: bool,
}

/// Installs the global subscriber; `default` is the filter when
/// `NIXCAST_LOG` is unset or invalid.
pub fn init<W>(format: LogFormat, default: &str, text: Text<W>)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIXCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_writer(text.writer).with_ansi(text.ansi).init(),
        LogFormat::Json => builder.with_writer(std::io::stderr).json().init(),
    }
}
