//! Logging on standard error: `--log-format text|json` (or
//! `NIXCAST_LOG_FORMAT`), filtered by `NIXCAST_LOG` (tracing's
//! `EnvFilter` syntax, e.g. `debug` or `nixcast=debug`). Errors are told
//! by `report_error`, in the same format.

use std::io::Write;
use std::sync::OnceLock;

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
    let _ = FORMAT.set(format);
    let filter = tracing_subscriber::EnvFilter::try_from_env("NIXCAST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.with_writer(text.writer).with_ansi(text.ansi).init(),
        LogFormat::Json => builder.with_writer(std::io::stderr).json().init(),
    }
}

/// The format `init` installed, for `report_error`.
static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// Tells an error once, its whole chain on one line: `error: …` on
/// standard error in text mode, one error event in JSON mode (where a bare
/// line would break the stream). Every error a command reports goes
/// through here, the last one (from `main`) and each of several hosts'.
pub fn report_error(e: &anyhow::Error) {
    let format = FORMAT.get().copied().unwrap_or(LogFormat::Text);
    report_error_to(format, e, &mut std::io::stderr().lock());
}

fn report_error_to(format: LogFormat, e: &anyhow::Error, text: &mut dyn Write) {
    match format {
        LogFormat::Text => {
            let _ = writeln!(text, "error: {e:#}");
        }
        LogFormat::Json => tracing::error!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A `MakeWriter` into a shared buffer.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().write(buf)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Buffer {
            self.clone()
        }
    }

    fn error() -> anyhow::Error {
        anyhow::anyhow!("no such file")
            .context("cannot read hosts/web.json")
            .context("web")
    }

    #[test]
    fn an_error_is_one_text_line_or_one_json_event() {
        let mut text = Vec::new();
        let json = Buffer::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(json.clone())
            .json()
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            report_error_to(LogFormat::Text, &error(), &mut text);
            report_error_to(LogFormat::Json, &error(), &mut text);
        });
        assert_eq!(
            String::from_utf8(text).unwrap(),
            "error: web: cannot read hosts/web.json: no such file\n"
        );
        let json = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = json.lines().collect();
        assert_eq!(lines.len(), 1, "{json}");
        let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(event["level"], "ERROR");
        assert_eq!(
            event["fields"]["message"],
            "web: cannot read hosts/web.json: no such file"
        );
    }
}
