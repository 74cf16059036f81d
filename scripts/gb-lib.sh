# gb-lib.sh: helpers shared by the gb-*.sh scripts in this directory. It is
# sourced by them (each looks for it next to its own resolved path) and is not
# meant to be run. The sourcing script sets prog (its name, for messages) and
# runs under set -euo pipefail; nothing here changes shell options or umask.
# shellcheck shell=bash disable=SC2154 # prog comes from the sourcing script

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
	printf '%s: sourced by the gb-*.sh scripts, not meant to be run\n' "${0##*/}" >&2
	exit 2
fi

say() { printf '%s: %s\n' "$prog" "$*" >&2; }
die() { printf '%s: error: %s\n' "$prog" "$*" >&2; exit 1; }
usage_error() {
	printf '%s: error: %s\n' "$prog" "$*" >&2
	printf "Run '%s --help' for usage.\n" "$prog" >&2
	exit 2
}

# start_tmp makes the scratch directory $tmp and removes it, and every file
# still listed in pending, when the script exits.
start_tmp() {
	tmp=$(mktemp -d)
	pending=()
	trap cleanup EXIT
}
cleanup() {
	rm -rf -- "$tmp"
	local f
	for f in ${pending[@]+"${pending[@]}"}; do rm -f -- "$f"; done
}

# ossl runs openssl, keeping its chatter out of sight unless it fails. No
# command given to it prints key material, so its stderr is safe to show.
ossl() {
	if ! openssl "$@" 2>"$tmp/openssl.err"; then
		say "openssl $1 failed:"
		sed 's/^/  /' "$tmp/openssl.err" >&2
		exit 1
	fi
}

# newfile DEST sets part to a fresh temporary path next to DEST, so that the
# final rename is atomic and a reader never sees a half-written file. It sets
# a variable rather than printing the path because a $(...) subshell could
# not add the file to pending, and a failed run would leave it behind.
newfile() {
	part=$(mktemp "$1.XXXXXX") || die "cannot create a file in $(dirname -- "$1")"
	pending+=("$part")
}

# place TMP DEST renames TMP to DEST; it never replaces an existing DEST.
place() {
	if [[ -e $2 ]]; then
		die "$2 appeared while $prog was running; not replacing it"
	fi
	mv -f -- "$1" "$2"
}

# new_key DEST GENPKEY_OPTION... writes a new private key (PKCS#8 PEM, mode
# 0600) to DEST with openssl genpkey; DEST must not exist.
new_key() {
	local dest=$1 part
	shift
	newfile "$dest"
	ossl genpkey "$@" -out "$part"
	chmod 600 -- "$part"
	place "$part" "$dest"
	say "wrote $dest"
}

# new_ec_key DEST writes a new EC P-256 key, the kind every certificate uses.
new_ec_key() { new_key "$1" -algorithm EC -pkeyopt ec_paramgen_curve:P-256; }
