//! A bundle (`nixcast bundle`): a tar file laid out like a cache, for hosts
//! without a network. Read only; indexed once, by its headers, without
//! reading any data.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::Context;
use futures_util::future::{BoxFuture, FutureExt};

use crate::{read_capped, Backend, Body, Entry, Error, Fetched, Validators};

pub struct Bundle {
    file: PathBuf,
    /// key → (offset, size) of its data in the file.
    index: HashMap<String, (u64, u64)>,
}

impl Bundle {
    pub fn open(file: &Path) -> anyhow::Result<Self> {
        let f = std::fs::File::open(file)
            .with_context(|| format!("cannot open the bundle {}", file.display()))?;
        let mut ar = tar::Archive::new(f);
        let mut index = HashMap::new();
        for e in ar
            .entries_with_seek()
            .with_context(|| format!("{} is not a bundle", file.display()))?
        {
            let e = e.with_context(|| format!("{} is not a valid bundle", file.display()))?;
            if e.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let name = e.path()?.to_string_lossy().into_owned();
            index.insert(name, (e.raw_file_position(), e.size()));
        }
        Ok(Self {
            file: file.to_owned(),
            index,
        })
    }

    fn reader(&self, key: &str) -> Result<(io::Take<std::fs::File>, u64), Error> {
        let url = self.url_of(key);
        let &(offset, size) = self
            .index
            .get(key)
            .ok_or_else(|| Error::NotFound(url.clone()))?;
        let mut f = std::fs::File::open(&self.file).map_err(|e| Error::io(&url, e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io(&url, e))?;
        Ok((f.take(size), size))
    }

    fn read_only(&self, key: &str) -> Error {
        Error::other(&self.url_of(key), "a bundle cannot be written to")
    }
}

impl Backend for Bundle {
    fn url_of(&self, key: &str) -> String {
        format!("{}#{key}", self.file.display())
    }

    fn get<'a>(
        &'a self,
        key: &'a str,
        cap: u64,
        _: &'a Validators,
    ) -> BoxFuture<'a, Result<Fetched, Error>> {
        async move {
            let url = self.url_of(key);
            let (r, size) = self.reader(key)?;
            if size > cap {
                return Err(Error::TooLarge { url, cap });
            }
            let bytes = read_capped(&url, r, cap)?;
            Ok(Fetched::Body(bytes, Validators::default()))
        }
        .boxed()
    }

    fn open<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Box<dyn Read + Send>, Error>> {
        async move { Ok(Box::new(self.reader(key)?.0) as Box<dyn Read + Send>) }.boxed()
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, Error>> {
        async move { Ok(self.index.contains_key(key)) }.boxed()
    }

    fn put<'a>(&'a self, key: &'a str, _: Body) -> BoxFuture<'a, Result<(), Error>> {
        async move { Err(self.read_only(key)) }.boxed()
    }

    fn put_new<'a>(&'a self, key: &'a str, _: Vec<u8>) -> BoxFuture<'a, Result<(), Error>> {
        async move { Err(self.read_only(key)) }.boxed()
    }

    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<Entry>, Error>> {
        async move {
            let modified = std::fs::metadata(&self.file)
                .and_then(|m| m.modified())
                .map_err(|e| Error::io(&self.url_of(prefix), e))?;
            let mut out: Vec<Entry> = self
                .index
                .iter()
                .filter(|(k, _)| match k.rsplit_once('/') {
                    Some((dir, _)) => dir == prefix,
                    None => prefix.is_empty(),
                })
                .map(|(k, &(_, size))| Entry {
                    key: k.clone(),
                    size,
                    modified,
                })
                .collect();
            out.sort();
            Ok(out)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move { Err(self.read_only(key)) }.boxed()
    }

    fn sync(&self) -> BoxFuture<'_, Result<(), Error>> {
        async { Ok(()) }.boxed()
    }

    fn holds(&self, key: &str) -> Option<bool> {
        Some(self.index.contains_key(key))
    }
}
