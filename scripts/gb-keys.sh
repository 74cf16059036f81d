#!/usr/bin/env bash
# gb-keys.sh: make an RSA key pair for gradebroker's JOSE tokens (a platform's
# signing key, or the broker's own token key). Run --help for usage.
set -euo pipefail
umask 077 # the private key is created 0600; the public key is opened up to 0644

prog=${0##*/}

usage() {
	cat <<USAGE
Usage: $prog --out PREFIX [--bits 2048|3072|4096]

Makes an RSA key pair for the JWS/JWE tokens exchanged between platforms and
the broker (RS512 signatures, RSA-OAEP-256 encryption):

  PREFIX.key  private key, PKCS#8 PEM, mode 0600; keep it on its owner's side
  PREFIX.pub  public key, SubjectPublicKeyInfo PEM; give it to the other side

Use it for a platform's key (register PREFIX.pub with the broker) and for the
broker's own token key (platforms get the public half from GET /v1/keys).

Options:
  --out PREFIX       path prefix of the two files; missing directories are
                     created with mode 0700
  --bits N           RSA modulus size: 2048, 3072 (default) or 4096
  -h, --help         show this help and exit

An existing PREFIX.key is never overwritten: re-running keeps it, says so on
stderr, writes PREFIX.pub from it if that is missing, and fails if PREFIX.pub
does not belong to it. stdout carries only "key: value" lines; spki_sha256 is
the SHA-256 of the DER public key, lower-case hex, to compare keys by.
USAGE
}

# say, die, usage_error, start_tmp, ossl, newfile, place, new_key: gb-lib.sh,
# found next to this script (symlinks followed), so it runs from anywhere.
here=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}" 2>/dev/null || printf '%s\n' "${BASH_SOURCE[0]}")")
[[ -r $here/gb-lib.sh ]] || { printf '%s: error: cannot read %s; the gb-*.sh scripts need it next to them\n' "$prog" "$here/gb-lib.sh" >&2; exit 1; }
# shellcheck source=SCRIPTDIR/gb-lib.sh
. "$here/gb-lib.sh"

prefix= bits=
while (($#)); do
	opt=$1 val= has_val=0
	case $opt in
	--*=*) val=${opt#*=} opt=${opt%%=*} has_val=1 ;;
	esac
	case $opt in
	-h | --help) usage; exit 0 ;;
	--out | --bits)
		if ((!has_val)); then
			# A following option is almost certainly a forgotten value, not a value.
			[[ $# -ge 2 && $2 != --* ]] || usage_error "$opt needs a value"
			val=$2
			shift
		fi
		[[ -n $val ]] || usage_error "$opt needs a non-empty value"
		case $opt in
		--out) prefix=$val ;;
		--bits) bits=$val ;;
		esac
		;;
	-*) usage_error "unknown option: $opt" ;;
	*) usage_error "unexpected argument: $opt" ;;
	esac
	shift
done
[[ -n $prefix ]] || usage_error "--out is required"
[[ $prefix != */ && ${prefix##*/} != . && ${prefix##*/} != .. ]] ||
	usage_error "bad --out '$prefix': give a path prefix such as keys/demo-token, not a directory"
case ${bits:-3072} in
2048 | 3072 | 4096) ;;
*) usage_error "bad --bits '$bits': must be 2048, 3072 or 4096" ;;
esac

command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH; install openssl 3"
key=$prefix.key pub=$prefix.pub
parent=$(dirname -- "$prefix")
mkdir -p -- "$parent" || die "cannot create directory $parent"
[[ -d $parent && -w $parent ]] || die "$parent is not a writable directory"

start_tmp

if [[ -e $key ]]; then
	say "kept existing $key"
	# Derive the public half in any case: it is both the check of an existing
	# PREFIX.pub and the content of a missing one.
	ossl pkey -in "$key" -pubout -out "$tmp/derived.pub"
	if [[ -e $pub ]]; then
		cmp -s -- "$tmp/derived.pub" "$pub" ||
			die "$pub does not hold the public key of $key; remove $pub to rewrite it from the key"
		say "kept existing $pub"
	else
		newfile "$pub"
		cp -- "$tmp/derived.pub" "$part"
		chmod 644 -- "$part"
		place "$part" "$pub"
		say "wrote $pub"
	fi
else
	[[ ! -e $pub ]] || die "$pub exists but $key is missing; remove $pub to make a new key pair"
	new_key "$key" -algorithm RSA -pkeyopt "rsa_keygen_bits:${bits:-3072}"
	newfile "$pub"
	ossl pkey -in "$key" -pubout -out "$part"
	chmod 644 -- "$part"
	place "$part" "$pub"
	say "wrote $pub"
fi

# Only the public half is inspected for the report: -text on the private key
# would print its secret numbers.
ossl pkey -pubin -in "$pub" -noout -text -out "$tmp/pub.txt"
actual=$(sed -n 's/.*(\([0-9]*\) bit).*/\1/p' "$tmp/pub.txt" | head -n1)
if [[ -n $bits && $bits != "$actual" ]]; then
	say "note: kept key has $actual bits, not the $bits asked for; remove both files to make a new one"
fi
ossl pkey -pubin -in "$pub" -outform DER -out "$tmp/pub.der"
spki=$(openssl dgst -sha256 -r "$tmp/pub.der")
spki=${spki%% *}

echo "private_key: $key"
echo "public_key: $pub"
echo "bits: $actual"
echo "spki_sha256: $spki"
