//! Deploys: a component's bytes, or a handler's source built into one,
//! checked, compiled, shared, recorded and swapped in as the app's next
//! version.

use super::*;

impl Apps {
    /// Deploys `bytes` (a component) as the next version of `name`, with the
    /// manifest's text if there is one, and makes it the one serving.
    ///
    /// `routes` replaces the app's custom routes; empty keeps them (every
    /// app also answers at `NAME.DOMAIN`). Nothing changes unless the whole
    /// deploy succeeds.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: Vec<u8>,
        manifest_text: Option<String>,
        routes: Vec<Route>,
    ) -> Result<Deployed, Error> {
        let started = Instant::now();
        validate_name(name)?;
        let limit = self.inner.options.max_upload;
        if bytes.len() > limit {
            return Err(Error::TooLarge { size: bytes.len(), limit });
        }
        let manifest = match &manifest_text {
            Some(text) => Manifest::parse(text)?,
            None => Manifest::default(),
        };
        self.deploy_version(started, name, bytes, manifest, manifest_text, routes, None).await
    }

    /// Builds a handler from its source (JavaScript or Python,
    /// [`crate::source`]) and deploys it as the app's next version, with
    /// the source kept in the version. A source that does not build is
    /// refused with the build tool's words, and nothing changes. One build
    /// runs at a time; the others wait their turn.
    pub async fn deploy_source(
        &self,
        name: &str,
        source: crate::source::Source,
        manifest_text: Option<String>,
        routes: Vec<Route>,
    ) -> Result<Deployed, Error> {
        let started = Instant::now();
        validate_name(name)?;
        source.check()?;
        let manifest = Manifest::for_source(manifest_text.as_deref())?;
        let (bytes, build_ms) = {
            let _turn = self.inner.builds.lock().await;
            let (tools, built) = (self.inner.options.fn_tools.clone(), source.clone());
            let build_started = Instant::now();
            let bytes = tokio::task::spawn_blocking(move || tools.build(&built))
                .await
                .map_err(|e| Error::Internal(e.to_string()))??;
            tracing::info!(
                app = name,
                lang = source.lang.as_str(),
                bytes = bytes.len(),
                ms = build_started.elapsed().as_millis() as u64,
                "Built a handler from source."
            );
            (bytes, build_started.elapsed().as_secs_f64() * 1000.0)
        };
        let deployed =
            self.deploy_version(started, name, bytes, manifest, manifest_text, routes, Some(source)).await?;
        Ok(Deployed { build_ms: Some(build_ms), ..deployed })
    }

    #[allow(clippy::too_many_arguments)]
    async fn deploy_version(
        &self,
        started: Instant,
        name: &str,
        bytes: Vec<u8>,
        manifest: Manifest,
        manifest_text: Option<String>,
        routes: Vec<Route>,
        source: Option<crate::source::Source>,
    ) -> Result<Deployed, Error> {
        runtime::check_header(&bytes)?;
        let limits = manifest.limits(self.inner.options.default_limits, self.inner.options.ceiling)?;

        let guard = self.app_lock(name);
        let _held = guard.lock().await;
        let existing = self.find(name).await?;
        let mut routes = normalise_routes(routes);
        if routes.is_empty()
            && let Some((app, _)) = &existing
        {
            routes = app.routes.clone();
        }
        let default = Route::default_for(name, &self.inner.options.domain);
        routes.retain(|r| *r != default);
        self.check_routes(name, &routes).await?;
        let config = self.resolve_config(name, &manifest).await?;
        let added = self.added_triggers(name).await?;
        crate::triggers::check_clash(name, &manifest.triggers(), &added)?;

        let sha256 = hearth_wasm::sha256_hex(&bytes);
        let size = bytes.len() as u64;
        let bytes = Arc::new(bytes);
        let _gc = self.inner.gc.read().await;
        let (compiled, saved) = {
            let (inner, sha, code, manifest) =
                (self.inner.clone(), sha256.clone(), bytes.clone(), manifest.clone());
            let compile = tokio::task::spawn_blocking(move || {
                let compiled = inner.runtime.component(&sha, || Ok(code))?;
                let pre = inner.runtime.prepare(&compiled, &manifest)?;
                Ok::<_, Error>((Arc::new(Code::new(&inner.runtime, &compiled, pre)), compiled.compiled))
            });
            let (blob, bytes) = (self.blob_path(&sha256), bytes.clone());
            let save = tokio::task::spawn_blocking(move || {
                if blob.is_file() {
                    Ok::<_, Error>(())
                } else {
                    Ok(hearth_wasm::write_atomically(&blob, &bytes)?)
                }
            });
            tokio::join!(compile, save)
        };
        let (code, compiled) = compiled.map_err(|e| Error::Internal(e.to_string()))??;
        saved.map_err(|e| Error::Internal(e.to_string()))??;
        // After the compile, so that what fails to compile is never shared.
        let shared = if self.inner.options.shared {
            Some(hearth_wasm::blobs::share(&*self.inner.store, record::BLOBS, &sha256, &bytes).await?)
        } else {
            None
        };

        let now = now_ms();
        let (mut app, revision) = match existing {
            Some((app, revision)) => (app, revision),
            None => (
                App {
                    name: name.to_owned(),
                    active: 0,
                    routes: vec![],
                    versions: vec![],
                    created_at: now,
                    updated_at: now,
                },
                0,
            ),
        };
        let version = Version {
            number: app.next_version(),
            sha256: sha256.clone(),
            size,
            created_at: now,
            manifest,
            manifest_text,
            source,
        };
        app.versions.push(version.clone());
        app.active = version.number;
        app.routes = routes;
        app.updated_at = now;
        let pruned = prune_versions(&mut app, self.inner.options.max_versions);
        self.write_holding(&app, revision, shared).await?;
        drop(_gc);

        let how = match (&code.tier, compiled, &code.fallback) {
            (_, false, _) => "Cranelift's code from the cache".to_owned(),
            (Tier::Baseline, true, _) => {
                "compiled by Winch; Cranelift compiles it in the background and its code takes over"
                    .to_owned()
            }
            (Tier::Optimized, true, Some(why)) => format!("compiled by Cranelift: {why}"),
            (Tier::Optimized, true, None) if code.shared_engine.is_some() => {
                "compiled by Cranelift around its engine's code from the cache".to_owned()
            }
            (Tier::Optimized, true, None) => "compiled by Cranelift".to_owned(),
        };
        let tier = code.tiering().state;
        let loaded = self.loaded(&app, &version, config, limits, code);
        self.install(name, self.routes_of(&app), Ok(loaded), crate::triggers::guards(&app, &added));
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.log(name).push(
            version.number,
            LogStream::Hearth,
            format!(
                "Deployed version {} ({} bytes, sha256 {}…, {how}) in {:.1} ms.",
                version.number,
                size,
                &sha256[..12],
                duration_ms
            ),
        );
        tracing::info!(
            app = name,
            version = version.number,
            compiled,
            ?tier,
            ms = duration_ms as u64,
            "Deployed app."
        );
        if pruned {
            self.collect_garbage().await;
        }
        Ok(Deployed {
            app: name.to_owned(),
            urls: self.urls(&app),
            version,
            compiled,
            duration_ms,
            build_ms: None,
            tier,
        })
    }
}
