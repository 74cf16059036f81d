#!/usr/bin/env bash
# gb-dev-pki.sh: make a complete development PKI for demos and tests with
# gb-ca.sh, gb-enroll.sh and gb-keys.sh. Run --help for usage.
set -euo pipefail
umask 077

prog=${0##*/}

usage() {
	cat <<USAGE
Usage: $prog DIR

Makes a complete development PKI in DIR (never for production: every key sits
in one directory next to the CA key):

  DIR/ca.crt, DIR/ca.key                      the CA (gb-ca.sh)
  DIR/broker.crt, DIR/broker.key              the broker's TLS server certificate
  DIR/clients/grader1.crt, .key               a grading server (role server)
  DIR/clients/admin.crt, .key                 an operator (role operator)
  DIR/clients/demo.crt, .key                  a platform (role platform)
  DIR/broker-token.key, DIR/broker-token.pub  the broker's token key pair
  DIR/demo-token.key, DIR/demo-token.pub      platform demo's token key pair
  DIR/wakeup.key                              the broker's wakeup key (32 random bytes)

Re-running keeps everything that exists and makes what is missing. stdout
repeats the "key: value" lines of each script, each group headed by a
"# ..." line.

Options:
  -h, --help         show this help and exit
USAGE
}

# say, die, usage_error, start_tmp, ossl, newfile, place, new_key: gb-lib.sh,
# found next to this script (symlinks followed), so it runs from anywhere.
here=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}" 2>/dev/null || printf '%s\n' "${BASH_SOURCE[0]}")")
[[ -r $here/gb-lib.sh ]] || { printf '%s: error: cannot read %s; the gb-*.sh scripts need it next to them\n' "$prog" "$here/gb-lib.sh" >&2; exit 1; }
# shellcheck source=SCRIPTDIR/gb-lib.sh
. "$here/gb-lib.sh"

dir=
while (($#)); do
	case $1 in
	-h | --help) usage; exit 0 ;;
	--) shift; break ;;
	-*) usage_error "unknown option: $1" ;;
	*)
		[[ -z $dir ]] || usage_error "unexpected argument: $1 (give exactly one DIR)"
		dir=$1
		;;
	esac
	shift
done
if (($#)); then
	[[ -z $dir && $# -eq 1 ]] || usage_error "give exactly one DIR"
	dir=$1
fi
[[ -n $dir ]] || usage_error "DIR is required"

echo "# CA and broker certificate"
bash "$here/gb-ca.sh" --dir "$dir"
echo "# server grader1"
bash "$here/gb-enroll.sh" --dir "$dir" --role server --name grader1
echo "# operator admin"
bash "$here/gb-enroll.sh" --dir "$dir" --role operator --name admin
echo "# platform demo"
bash "$here/gb-enroll.sh" --dir "$dir" --role platform --name demo
echo "# broker token key"
bash "$here/gb-keys.sh" --out "$dir/broker-token"
echo "# platform demo token key"
bash "$here/gb-keys.sh" --out "$dir/demo-token"
echo "# broker wakeup key"
if [[ ! -e $dir/wakeup.key ]]; then
	openssl rand -out "$dir/wakeup.key.tmp" 32
	chmod 600 -- "$dir/wakeup.key.tmp"
	mv -f -- "$dir/wakeup.key.tmp" "$dir/wakeup.key"
	say "wrote $dir/wakeup.key"
else
	say "kept existing $dir/wakeup.key"
fi
echo "wakeup_key: $dir/wakeup.key"
