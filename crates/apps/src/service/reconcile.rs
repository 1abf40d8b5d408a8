//! The apps' reconcile loop: the loaded set of components, their routes
//! and their webhooks' guards made to match the `apps/` records, at start
//! and on every change any writer makes.

use super::*;

impl Apps {
    pub(super) async fn follow(&self, shutdown: &mut watch::Receiver<bool>) {
        let from = loop {
            match self.load_all().await {
                Ok(revision) => break revision + 1,
                Err(e) => {
                    tracing::warn!(error = %chain(&e), "Cannot load apps from the store; retrying.");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = stopped(shutdown) => return,
                    }
                }
            }
        };
        self.inner.ready.send_replace(true);
        // Records and added triggers (whose webhooks guard the app); one
        // follower, so that the two are seen in the store's order.
        let mut changes = Follower::new(self.inner.store.clone(), record::APPS, from, "Apps");
        loop {
            let change = tokio::select! {
                () = stopped(shutdown) => return,
                change = changes.next() => change,
            };
            let event = match change {
                Change::Event(event) => event,
                Change::Reset(_) => {
                    if let Err(e) = self.load_all().await {
                        tracing::warn!(error = %chain(&e), "Cannot reload apps from the store.");
                    }
                    continue;
                }
            };
            let key = &event.kv.key;
            let name = if let Some(name) = key.strip_prefix(record::RECORDS) {
                name
            } else if let Some(rest) = key.strip_prefix(crate::triggers::TRIGGERS) {
                rest.split_once('/').map_or(rest, |(name, _)| name)
            } else {
                continue;
            };
            let name = name.to_owned();
            if let Err(e) = self.reconcile(&name).await {
                tracing::warn!(app = name, error = %chain(&e), "Cannot reconcile an app.");
            }
        }
    }

    /// Makes the loaded set match the store; returns the revision read at.
    pub(super) async fn load_all(&self) -> Result<u64, Error> {
        let range = self.inner.store.range(record::RECORDS).await?;
        let mut names = HashSet::new();
        for kv in &range.kvs {
            let name = kv.key[record::RECORDS.len()..].to_owned();
            if let Err(e) = self.reconcile(&name).await {
                tracing::warn!(app = name, error = %chain(&e), "Cannot load an app.");
            }
            names.insert(name);
        }
        let gone: Vec<String> =
            lock(&self.inner.loaded).keys().filter(|n| !names.contains(*n)).cloned().collect();
        for name in gone {
            let guard = self.app_lock(&name);
            let _held = guard.lock().await;
            self.uninstall(&name);
        }
        Ok(range.revision)
    }

    /// Brings one app in line with its record and its added triggers.
    pub(super) async fn reconcile(&self, name: &str) -> Result<(), Error> {
        let guard = self.app_lock(name);
        let _held = guard.lock().await;
        self.reconcile_held(name).await
    }

    /// [`Apps::reconcile`], with the app's lock held.
    pub(crate) async fn reconcile_held(&self, name: &str) -> Result<(), Error> {
        let Some((app, _)) = self.find(name).await? else {
            self.uninstall(name);
            return Ok(());
        };
        let routes = self.routes_of(&app);
        // Without its webhooks' checks the app is not served at all: a
        // signed route must never answer unsigned requests.
        let added = match self.added_triggers(name).await {
            Ok(added) => added,
            Err(e) => {
                let reason = format!(
                    "its webhooks cannot be read from the store ({}); see the daemon's log",
                    chain(&e)
                );
                self.install(name, routes, Err(reason), Guards::from([]));
                return Err(e);
            }
        };
        let guards = crate::triggers::guards(&app, &added);
        let current = lock(&self.inner.loaded)
            .get(name)
            .map(|e| (e.routes.clone(), e.serving.clone(), e.guards.clone()));
        let Some(version) = app.active_version() else {
            self.install(
                name,
                routes,
                Err(format!("its active version {} is not among its versions", app.active)),
                guards,
            );
            return Ok(());
        };
        match current {
            Some((r, Ok(loaded), g))
                if loaded.ctx.version == version.number && loaded.sha256 == version.sha256 =>
            {
                if r != routes || g != guards {
                    self.install(name, routes, Ok(loaded), guards);
                }
            }
            _ => {
                let started = Instant::now();
                let serving = self.load(&app, version).await.map(|(loaded, _)| loaded);
                if let Err(e) = &serving {
                    self.log(name).push(
                        version.number,
                        LogStream::Hearth,
                        format!("Cannot load version {}: {e}", version.number),
                    );
                } else {
                    tracing::info!(
                        app = name,
                        version = version.number,
                        ms = started.elapsed().as_millis() as u64,
                        "Loaded app."
                    );
                }
                self.install(name, routes, serving.map_err(|e| e.to_string()), guards);
            }
        }
        Ok(())
    }

    /// Compiles (or loads from the cache) and prepares one version. Bytes
    /// missing here are fetched from the store, where a host that shares
    /// it with others put them when it deployed the version.
    pub(super) async fn load(&self, app: &App, version: &Version) -> Result<(Arc<Loaded>, bool), Error> {
        let config = self.resolve_config(&app.name, &version.manifest).await?;
        let limits =
            version.manifest.limits(self.inner.options.default_limits, self.inner.options.ceiling)?;
        let (code, compiled) = match self.prepare(&app.name, version).await {
            Err(Error::BlobMissing { .. }) => {
                // Held so that no garbage collection here takes the bytes
                // between their fetch and their compile.
                let _gc = self.inner.gc.read().await;
                if !self.fetch_blob(&app.name, &version.sha256).await? {
                    return Err(Error::BlobMissing {
                        app: app.name.clone(),
                        sha256: version.sha256.clone(),
                        dir: self.inner.blobs_dir.clone(),
                    });
                }
                self.prepare(&app.name, version).await?
            }
            prepared => prepared?,
        };
        Ok((self.loaded(app, version, config, limits, code), compiled))
    }

    /// The pre-instantiated component of `version`: from memory or the
    /// compiled cache, or compiled from the bytes in the data dir
    /// ([`Error::BlobMissing`] when they are not there).
    async fn prepare(&self, name: &str, version: &Version) -> Result<(Arc<Code>, bool), Error> {
        let blob = self.blob_path(&version.sha256);
        let (name, sha) = (name.to_owned(), version.sha256.clone());
        let inner = self.inner.clone();
        let manifest = version.manifest.clone();
        tokio::task::spawn_blocking(move || {
            let compiled = inner.runtime.component(&sha, || match std::fs::read(&blob) {
                Ok(bytes) => Ok(Arc::new(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(Error::BlobMissing { app: name, sha256: sha.clone(), dir: inner.blobs_dir.clone() })
                }
                Err(e) => Err(Error::io(&blob, e)),
            })?;
            let pre = inner.runtime.prepare(&compiled, &manifest)?;
            Ok::<_, Error>((Arc::new(Code::new(&inner.runtime, &compiled, pre)), compiled.compiled))
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    /// Fetches the bytes of `sha256` from the store into the data dir,
    /// checked against their hash. False when the store has none.
    async fn fetch_blob(&self, app: &str, sha256: &str) -> Result<bool, Error> {
        let Some(bytes) = hearth_wasm::blobs::fetch(&*self.inner.store, record::BLOBS, sha256).await? else {
            return Ok(false);
        };
        let (blob, size) = (self.blob_path(sha256), bytes.len());
        tokio::task::spawn_blocking(move || hearth_wasm::write_atomically(&blob, &bytes))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        tracing::info!(app, sha256, size, "Fetched an app's component from the store.");
        Ok(true)
    }

    pub(crate) fn loaded(
        &self,
        app: &App,
        version: &Version,
        config: crate::secrets::AppConfig,
        limits: Limits,
        code: Arc<Code>,
    ) -> Arc<Loaded> {
        let ctx = AppCtx {
            name: app.name.clone(),
            version: version.number,
            state: self.inner.store.clone(),
            kv_stores: version.manifest.key_value.clone(),
            config: config.values,
            outbound: version.manifest.outbound_rules(),
            resolver: self.inner.options.resolver.clone(),
            services: self.inner.upstreams.clone(),
            limits,
            log: self.log(&app.name),
        };
        Arc::new(Loaded {
            ctx: Arc::new(ctx),
            code,
            sha256: version.sha256.clone(),
            config_seen: config.seen,
        })
    }
}
