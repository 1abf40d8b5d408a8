#!/usr/bin/env bash
# Checks the docs' links. Every relative link in README.md, docs/*.md, the
# other top-level Markdown files and the examples' READMEs points at a file
# or directory that exists; every `#anchor` into a Markdown file names one
# of its headings (as GitHub makes them); and README.md links every page
# under docs/. `make lint` runs it.
#
# So that it cannot pass by finding nothing, it first runs itself on a
# sample with one good link and two broken ones and fails unless it finds
# exactly those two; then it fails if the real docs hold no link at all.
set -euo pipefail
export LC_ALL=C.UTF-8
cd "$(dirname "$0")/.."

# Prints FILE's lines outside fenced code blocks.
text() {
  awk '/^[[:space:]]*(```|~~~)/ { code = !code; next } !code' "$1"
}

# The same, with code spans removed, so that `[x](y)` in an example is not
# taken for a link.
prose() {
  text "$1" | sed -E 's/`[^`]*`//g'
}

# Prints the target of every inline link and link definition in FILE.
links() {
  prose "$1" | grep -oE '\]\([^)[:space:]]+\)' | sed -E 's/^\]\(//; s/\)$//' || true
  prose "$1" | grep -oE '^ {0,3}\[[^]]+\]:[[:space:]]+[^[:space:]]+' | sed -E 's/^[^:]*:[[:space:]]+//' || true
}

# Prints the anchor of every heading in FILE, as GitHub makes it: lower
# case, links reduced to their text, punctuation dropped, spaces as
# hyphens, and -1, -2... after a repeated one.
anchors() {
  text "$1" | sed -nE 's/^ {0,3}#{1,6}[[:space:]]+//p' \
    | sed -E 's/[[:space:]]+#+[[:space:]]*$//; s/\[([^]]*)\]\([^)]*\)/\1/g; s/.*/\L&/; s/[^[:alnum:] _-]//g; s/ /-/g' \
    | awk '{ n = seen[$0]++; print (n ? $0 "-" n : $0) }'
}

# Checks the docs under ROOT; prints one line per problem.
check() {
  local root=$1 file target path frag dest page
  local files=("$root/README.md")
  for page in "$root"/*.md "$root"/docs/*.md "$root"/examples/*/README.md "$root"/examples/*/*/README.md; do
    [ -e "$page" ] && [ "$page" != "$root/README.md" ] && files+=("$page")
  done
  for file in "${files[@]}"; do
    while IFS= read -r target; do
      case $target in
        *://* | mailto:*) continue ;;
      esac
      path=${target%%#*}
      frag=
      [[ $target == *"#"* ]] && frag=${target#*#}
      if [ -z "$path" ]; then
        dest=$file
      elif [[ $path == /* ]]; then
        dest=$root$path
      else
        dest=$(dirname "$file")/$path
      fi
      if [ ! -e "$dest" ]; then
        echo "${file#"$root"/}: $target: no such file"
      elif [ -n "$frag" ] && [[ $dest == *.md ]] && ! anchors "$dest" | grep -qxF -- "$frag"; then
        echo "${file#"$root"/}: $target: no heading with that anchor"
      fi
      echo "$file" >>"$counted"
    done < <(links "$file")
  done
  if [ -d "$root/docs" ]; then
    for page in "$root"/docs/*.md; do
      [ -e "$page" ] || continue
      page=${page#"$root"/}
      links "$root/README.md" | sed 's/#.*//' | grep -qxF -- "$page" \
        || echo "README.md: does not link to $page"
    done
  fi
}

counted=$(mktemp)
sample=$(mktemp -d)
trap 'rm -rf "$counted" "$sample"' EXIT

# The self-check: a sample with one good link, a missing file and a
# missing anchor must give exactly two problems.
mkdir -p "$sample/docs"
printf '# Sample\n\n[ok](docs/page.md#a-heading) [gone](docs/gone.md) [bad](docs/page.md#nowhere)\n`[code](docs/not-a-link.md)`\n' >"$sample/README.md"
printf '# Page\n\n## A heading\n' >"$sample/docs/page.md"
found=$(check "$sample")
if [ "$(grep -c . <<<"$found")" -ne 2 ] || ! grep -q 'gone.md: no such file' <<<"$found" \
  || ! grep -q '#nowhere: no heading' <<<"$found"; then
  echo "check-doc-links: the self-check on a broken sample failed; it found:" >&2
  echo "${found:-nothing}" >&2
  exit 1
fi

: >"$counted"
problems=$(check .)
checked=$(grep -c . "$counted" || true)
if [ "$checked" -eq 0 ]; then
  echo "check-doc-links: found no link in the docs" >&2
  exit 1
fi
if [ -n "$problems" ]; then
  echo "$problems" >&2
  echo "check-doc-links: $(grep -c . <<<"$problems") broken of $checked links" >&2
  exit 1
fi
echo "check-doc-links: $checked links, all good"
