import { defineConfig } from 'vite';

// The dashboard is served by the daemon under /ui/ and embedded in the
// binary (crates/api/build.rs reads dist/). Assets under assets/ carry a
// content hash in their names, which is what lets the daemon serve them
// as immutable.
export default defineConfig({
  base: '/ui/',
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    target: 'es2022',
    // No source maps in the binary: they would double what it carries.
    sourcemap: false,
    // No modulepreload polyfill: it would be an inline script, which the
    // daemon's Content-Security-Policy refuses.
    modulePreload: { polyfill: false },
    assetsInlineLimit: 0,
  },
});
