# Sourced by test.sh: makes sure Debian's headless Chromium and its WebDriver
# (packages chromium and chromium-driver: /usr/bin/chromium, /usr/bin/chromedriver)
# are there for the demo's browser test, installing them with apt-get when
# missing. Elsewhere it says what to install; the browser test then fails naming
# the missing binary.

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null; then
    echo "installing Debian's chromium and chromium-driver for the demo's browser test" >&2
    apt_get=(apt-get)
    if [ "$(id -u)" != 0 ]; then
      apt_get=(sudo apt-get)
    fi
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" update -qq >&2
    DEBIAN_FRONTEND=noninteractive "${apt_get[@]}" install -y -qq --no-install-recommends \
      chromium chromium-driver >&2
  else
    echo "warning: no apt-get: install Chromium at /usr/bin/chromium and ChromeDriver at" \
      "/usr/bin/chromedriver (Debian: chromium, chromium-driver), or the demo's browser" \
      "test fails" >&2
  fi
fi
