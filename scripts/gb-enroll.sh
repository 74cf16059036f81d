#!/usr/bin/env bash
# gb-enroll.sh: issue a gradebroker client certificate (a grading server, an
# operator or a platform) from the CA made by gb-ca.sh. Run --help for usage.
set -euo pipefail
umask 077 # every file starts private; the certificate is opened up to 0644 below

prog=${0##*/}
name_re='^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'

usage() {
	cat <<USAGE
Usage: $prog --dir DIR --role server|operator|platform --name NAME [--days N] [--out OUTDIR]

Issues a TLS client certificate signed by the CA in DIR (made by gb-ca.sh):

  OUTDIR/NAME.key  private key, EC P-256, PKCS#8 PEM, mode 0600
  OUTDIR/NAME.crt  certificate: CN=NAME, OU=ROLE, extendedKeyUsage clientAuth,
                   random 128-bit serial, valid N days

Options:
  --dir DIR          the CA directory (holds ca.crt and ca.key)
  --role ROLE        server (a graderd), operator (admin API) or platform
  --name NAME        1-63 characters from A-Z a-z 0-9 . _ - starting with a
                     letter or digit; also the file name
  --days N           validity in days (default: 365)
  --out OUTDIR       where the files go (default: DIR/clients)
  -h, --help         show this help and exit

Files are named after NAME only, so one NAME holds one role in an OUTDIR;
enrolling an existing NAME under another role is refused.

Existing keys and certificates are never overwritten: re-running keeps them,
says so on stderr and prints the kept certificate's identity. To renew, remove
OUTDIR/NAME.crt (and OUTDIR/NAME.key for a new key) and run again.

stdout carries only "key: value" lines, in the forms the broker shows and
stores (compare them when registering the server, operator or platform):

  serial:       lower-case hex, no colons, no leading zeros
  issuer:       issuer DN, RFC 2253 (e.g. CN=gradebroker CA)
  subject:      subject DN, RFC 2253 (e.g. CN=grader1,OU=server)
  fingerprint:  SHA-256 of the DER certificate, lower-case hex, no colons
  role:         the role (the subject's OU)
  not_after:    expiry, RFC 3339 UTC
  cert_file:    path of the certificate
  key_file:     path of the private key
USAGE
}

# say, die, usage_error, start_tmp, ossl, newfile, place, new_key: gb-lib.sh,
# found next to this script (symlinks followed), so it runs from anywhere.
here=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}" 2>/dev/null || printf '%s\n' "${BASH_SOURCE[0]}")")
[[ -r $here/gb-lib.sh ]] || { printf '%s: error: cannot read %s; the gb-*.sh scripts need it next to them\n' "$prog" "$here/gb-lib.sh" >&2; exit 1; }
# shellcheck source=SCRIPTDIR/gb-lib.sh
. "$here/gb-lib.sh"

dir= role= name= days=365 out=
while (($#)); do
	opt=$1 val= has_val=0
	case $opt in
	--*=*) val=${opt#*=} opt=${opt%%=*} has_val=1 ;;
	esac
	case $opt in
	-h | --help) usage; exit 0 ;;
	--dir | --role | --name | --days | --out)
		if ((!has_val)); then
			# A following option is almost certainly a forgotten value, not a value.
			[[ $# -ge 2 && $2 != --* ]] || usage_error "$opt needs a value"
			val=$2
			shift
		fi
		[[ -n $val ]] || usage_error "$opt needs a non-empty value"
		case $opt in
		--dir) dir=$val ;;
		--role) role=$val ;;
		--name) name=$val ;;
		--days) days=$val ;;
		--out) out=$val ;;
		esac
		;;
	-*) usage_error "unknown option: $opt" ;;
	*) usage_error "unexpected argument: $opt" ;;
	esac
	shift
done
[[ -n $dir ]] || usage_error "--dir is required"
[[ -n $role ]] || usage_error "--role is required (server, operator or platform)"
[[ -n $name ]] || usage_error "--name is required"
case $role in
server | operator | platform) ;;
*) usage_error "bad --role '$role': must be server, operator or platform" ;;
esac
[[ $name =~ $name_re ]] || usage_error "bad --name '$name': use 1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"
[[ $days =~ ^[1-9][0-9]{0,4}$ ]] || usage_error "bad --days '$days': must be a whole number of days from 1 to 99999"
out=${out:-$dir/clients}

command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH; install openssl 3"
ca_key=$dir/ca.key ca_crt=$dir/ca.crt
[[ -f $ca_crt ]] || die "no CA certificate at $ca_crt; run gb-ca.sh --dir $dir first"
[[ -f $ca_key ]] || die "no CA key at $ca_key; enroll on the machine that holds the CA key"
mkdir -p -- "$out" || die "cannot create directory $out"
[[ -d $out && -w $out ]] || die "$out is not a writable directory"

start_tmp

# dn prints a certificate's subject or issuer DN as RFC 2253, the form Go's
# pkix.Name.String prints for the attributes these scripts use. -esc_msb is off
# because Go keeps UTF-8 as it is.
dn() {
	local v
	v=$(openssl x509 -in "$2" -noout "-$1" -nameopt RFC2253,-esc_msb)
	printf '%s\n' "${v#*=}"
}

key=$out/$name.key crt=$out/$name.crt

if [[ -e $crt ]]; then
	[[ -e $key ]] || die "$crt exists but $key is missing (remove $crt to issue a new certificate and key)"
	subject=$(dn subject "$crt")
	if [[ ,$subject, != *",OU=$role,"* ]]; then
		die "$crt already exists with subject $subject, not role $role; choose another --name or --out"
	fi
	say "kept existing $key"
	say "kept existing $crt"
else
	if [[ -e $key ]]; then
		say "kept existing $key"
	else
		new_ec_key "$key"
	fi
	cat >"$tmp/openssl.cnf" <<CNF
[ req ]
distinguished_name = req_dn
string_mask = utf8only
utf8 = yes
[ req_dn ]
[ client_ext ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
CNF
	ossl req -new -config "$tmp/openssl.cnf" -key "$key" \
		-subj "/OU=$role/CN=$name" -out "$tmp/client.csr"
	serial=$(openssl rand -hex 16) || die "openssl rand failed"
	newfile "$crt"
	ossl x509 -req -in "$tmp/client.csr" -CA "$ca_crt" -CAkey "$ca_key" \
		-set_serial "0x$serial" -days "$days" -sha256 \
		-extfile "$tmp/openssl.cnf" -extensions client_ext -out "$part"
	chmod 644 -- "$part"
	place "$part" "$crt"
	say "wrote $crt"
fi

# The printed forms match the Go certs package (IdentityOf): serial as
# big.Int.Text(16), fingerprint as lower-case hex of SHA-256 over the DER.
serial=$(openssl x509 -in "$crt" -noout -serial)
serial=${serial#*=}
serial=${serial,,}
while [[ $serial == 0?* ]]; do serial=${serial#0}; done
fp=$(openssl x509 -in "$crt" -noout -fingerprint -sha256)
fp=${fp#*=}
fp=${fp//:/}
not_after=$(openssl x509 -in "$crt" -noout -enddate -dateopt iso_8601)
not_after=${not_after#*=}
not_after=${not_after/ /T}

echo "serial: $serial"
echo "issuer: $(dn issuer "$crt")"
echo "subject: $(dn subject "$crt")"
echo "fingerprint: ${fp,,}"
echo "role: $role"
echo "not_after: $not_after"
echo "cert_file: $crt"
echo "key_file: $key"
