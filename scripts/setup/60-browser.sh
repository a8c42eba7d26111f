# Browser tests of the admin dashboard (hub/tests/admin_browser.rs): Debian's
# Chromium, driven headless by npm's playwright-core (the library only: it
# downloads no browser) in a project-local node_modules under
# hub/tests/browser/. Node and npm from Debian when missing.
command -v node >/dev/null 2>&1 || apt_install nodejs
command -v npm >/dev/null 2>&1 || apt_install npm
apt_install chromium
if [[ ! -e hub/tests/browser/node_modules/playwright-core/package.json ]]; then
  log "installing playwright-core into hub/tests/browser/node_modules"
  (cd hub/tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
fi
