//! A cache in an S3-style bucket: `s3://BUCKET/PREFIX?endpoint=URL&region=R`.
//!
//! Credentials come from the standard `AWS_*` variables, the agent's
//! `--environment-file`, or what else object_store finds (a web identity
//! token, container or instance credentials). Messages never echo the URL's
//! query or a user part, nor the server's text unescaped. An object appears
//! whole when its PUT (or the completion of its multipart upload) succeeds,
//! so a PUT is durable once it returns and `sync` has nothing to do.

use std::io::{self, Read};
use std::sync::Arc;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::http::{HttpOptions, ATTEMPTS, CONNECT_TIMEOUT};
use crate::secrets::AwsSettings;
use crate::{redact, Backend, Body, Entry, Error, Fetched, Validators};

/// Objects up to this size are sent in one PUT; larger ones in parts of this size.
const PART_SIZE: usize = 8 << 20;

pub struct Bucket {
    store: Arc<object_store::aws::AmazonS3>,
    bucket: String,
    prefix: String,
    /// S3 answers 403 instead of 404 for a missing key when the caller may
    /// not list the bucket. The agent says "access denied" (its credentials
    /// are the likelier fault); a publisher treats it as missing.
    denied_is_missing: bool,
}

impl Bucket {
    /// `s3://BUCKET/PREFIX?endpoint=URL&region=R`, as `nixcast publish --to`
    /// takes it. Messages never echo the URL's query or a user part.
    pub fn open(spec: &str, opts: &HttpOptions, aws: &AwsSettings) -> anyhow::Result<Self> {
        let (allow_insecure_http, stall) = (opts.allow_insecure_http, opts.stall_timeout);
        let rest = spec.strip_prefix("s3://").expect("an s3 URL");
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        anyhow::ensure!(
            !location.contains('@'),
            "the bucket URL {} holds credentials; give them in the AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY variables",
            redact(spec)
        );
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        anyhow::ensure!(!bucket.is_empty(), "no bucket in s3://{location}");
        let client = object_store::ClientOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            // NARs take as long as they take; what must not happen is a stall.
            .with_timeout_disabled()
            .with_read_timeout(stall);
        let retry = object_store::RetryConfig {
            max_retries: ATTEMPTS as usize - 1,
            ..Default::default()
        };
        let mut b = object_store::aws::AmazonS3Builder::from_env();
        for (k, v) in aws {
            let key = k.parse().map_err(|_| {
                anyhow::anyhow!(
                    "unknown AWS setting {} in --environment-file",
                    k.to_uppercase()
                )
            })?;
            b = b.with_config(key, v.as_str());
        }
        let mut b = b
            .with_bucket_name(bucket)
            .with_client_options(client)
            .with_retry(retry);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=') else {
                anyhow::bail!("a parameter without a value in the query of s3://{location}");
            };
            b = match k {
                "endpoint" => {
                    anyhow::ensure!(
                        !v.contains('@'),
                        "the endpoint of s3://{location} holds credentials; give them in the \
                         AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables"
                    );
                    let http = v.starts_with("http://");
                    anyhow::ensure!(
                        !http || allow_insecure_http,
                        "refusing the plain http endpoint {v}: a closure reveals the host's \
                         configuration; use https, or --allow-insecure-http on a trusted network"
                    );
                    b.with_endpoint(v)
                        .with_allow_http(http)
                        .with_virtual_hosted_style_request(false)
                }
                "region" => b.with_region(v),
                _ => anyhow::bail!(
                    "unknown parameter {:?} in the query of s3://{location}: use endpoint and region",
                    k.escape_debug().to_string()
                ),
            };
        }
        let store = b
            .build()
            .map_err(|e| anyhow::anyhow!("cannot open s3://{location}: {e}"))?;
        Ok(Bucket {
            denied_is_missing: false,
            store: Arc::new(store),
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }

    fn path(&self, key: &str) -> object_store::path::Path {
        if self.prefix.is_empty() {
            key.into()
        } else {
            format!("{}/{key}", self.prefix).into()
        }
    }

    fn url(&self, key: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.path(key))
    }

    async fn get_object(
        &self,
        key: &str,
        opts: GetOptions,
    ) -> Result<object_store::GetResult, Error> {
        let r = self.store.get_opts(&self.path(key), opts).await;
        r.map_err(|e| self.error(key, e))
    }

    /// object_store's messages hold their causes already (no `error_chain`).
    fn error(&self, key: &str, e: object_store::Error) -> Error {
        use object_store::Error as E;
        let url = self.url(key);
        match e {
            E::NotFound { .. } => Error::NotFound(url),
            E::PermissionDenied { .. } if self.denied_is_missing => Error::NotFound(url),
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                // S3's error code says which: a bad signature, an unknown key, a policy.
                let text = e.to_string();
                let code = text
                    .split_once("<Code>")
                    .and_then(|(_, rest)| rest.split_once("</Code>"))
                    .map(|(code, _)| code)
                    .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric()))
                    .unwrap_or("no error code");
                Error::Transport {
                    url,
                    msg: format!(
                        "access denied ({code}); do the AWS_* credentials allow reading this bucket?"
                    ),
                }
            }
            e => Error::Transport {
                url,
                msg: printable(&e.to_string()),
            },
        }
    }

    async fn read_capped(
        &self,
        key: &str,
        r: object_store::GetResult,
        cap: u64,
    ) -> Result<Vec<u8>, Error> {
        let url = self.url(key);
        if r.meta.size > cap {
            return Err(Error::TooLarge { url, cap });
        }
        let mut stream = r.into_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.try_next().await.map_err(|e| Error::Transport {
            url: url.clone(),
            msg: printable(&e.to_string()),
        })? {
            if (buf.len() + chunk.len()) as u64 > cap {
                return Err(Error::TooLarge { url, cap });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    }

    /// A 403 for a key is taken as its absence (see `denied_is_missing`).
    pub fn denied_is_missing(mut self) -> Self {
        self.denied_is_missing = true;
        self
    }

    fn key_of(&self, p: &ObjectPath) -> String {
        let s = p.as_ref();
        match self.prefix.is_empty() {
            true => s.to_owned(),
            false => s
                .strip_prefix(&format!("{}/", self.prefix))
                .unwrap_or(s)
                .to_owned(),
        }
    }

    async fn put_file(&self, key: &str, mut f: std::fs::File, len: u64) -> Result<(), Error> {
        let path = self.path(key);
        let url = self.url(key);
        let io = |e: io::Error| Error::io(&url, e);
        if len as usize <= PART_SIZE {
            let mut buf = Vec::with_capacity(len as usize);
            f.read_to_end(&mut buf).map_err(io)?;
            let put = self.store.put(&path, PutPayload::from(buf)).await;
            return put.map(drop).map_err(|e| self.error(key, e));
        }
        // Large NARs go up in parts; the object appears when the upload completes.
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(|e| self.error(key, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            w.wait_for_capacity(4)
                .await
                .map_err(|e| self.error(key, e))?;
            w.write(&buf[..n]);
        }
        w.finish().await.map(drop).map_err(|e| self.error(key, e))
    }
}

impl Backend for Bucket {
    fn url_of(&self, key: &str) -> String {
        self.url(key)
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        cap: u64,
        v: &'a Validators,
    ) -> BoxFuture<'a, Result<Fetched, Error>> {
        async move {
            let opts = GetOptions {
                if_none_match: v.etag.clone(),
                ..GetOptions::default()
            };
            let r = match self.store.get_opts(&self.path(key), opts).await {
                Err(object_store::Error::NotModified { .. }) if v.etag.is_some() => {
                    return Ok(Fetched::NotModified)
                }
                r => r.map_err(|e| self.error(key, e))?,
            };
            let validators = Validators {
                etag: r.meta.e_tag.clone(),
                last_modified: None,
            };
            Ok(Fetched::Body(
                self.read_capped(key, r, cap).await?,
                validators,
            ))
        }
        .boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Box<dyn Read + Send>, Error>> {
        async move {
            let r = self.get_object(key, GetOptions::default()).await?;
            let stream = r.into_stream().map_err(io::Error::other);
            let reader = tokio_util::io::StreamReader::new(stream);
            Ok(Box::new(tokio_util::io::SyncIoBridge::new(reader)) as Box<dyn Read + Send>)
        }
        .boxed()
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        async move {
            match self.store.head(&self.path(key)).await {
                Ok(_) => Ok(true),
                Err(e) => match self.error(key, e) {
                    Error::NotFound(_) => Ok(false),
                    e => Err(e),
                },
            }
        }
        .boxed()
    }

    fn put<'a>(&'a self, key: &'a str, body: Body) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            match body {
                Body::Bytes(bytes) => {
                    let put = self.store.put(&self.path(key), bytes.into()).await;
                    put.map(drop).map_err(|e| self.error(key, e))
                }
                Body::File(tmp) => {
                    let url = self.url(key);
                    let len = tmp
                        .as_file()
                        .metadata()
                        .map_err(|e| Error::io(&url, e))?
                        .len();
                    let f = tmp.reopen().map_err(|e| Error::io(&url, e))?;
                    self.put_file(key, f, len).await
                }
            }
        }
        .boxed()
    }

    fn put_new<'a>(&'a self, key: &'a str, body: Vec<u8>) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            // Not every S3-compatible server has conditional PUTs; a HEAD
            // first catches all but two publishers racing.
            if self.exists(key).await? {
                return Err(Error::other(&self.url(key), "exists already"));
            }
            self.put(key, Body::Bytes(body)).await
        }
        .boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Error>> {
        async move {
            let dir = ObjectPath::from(self.path(prefix).to_string());
            let listed = self
                .store
                .list_with_delimiter(Some(&dir))
                .await
                .map_err(|e| self.error(prefix, e))?;
            let mut out: Vec<Entry> = listed
                .objects
                .into_iter()
                .map(|o| Entry {
                    key: self.key_of(&o.location),
                    size: o.size,
                    modified: o.last_modified.into(),
                })
                .collect();
            out.sort();
            Ok(out)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            match self.store.delete(&self.path(key)).await {
                Ok(()) => Ok(()),
                Err(e) => match self.error(key, e) {
                    Error::NotFound(_) => Ok(()),
                    e => Err(e),
                },
            }
        }
        .boxed()
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), Error>> {
        async { Ok(()) }.boxed()
    }
}

/// An S3 error may quote the server's answer: no control characters from it
/// reach a terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}
