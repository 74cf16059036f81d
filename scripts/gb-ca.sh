#!/usr/bin/env bash
# gb-ca.sh: make the gradebroker certificate authority and the broker's TLS
# server certificate. Needs only bash and openssl 3. Run --help for usage.
set -euo pipefail
umask 077 # every file starts private; certificates are opened up to 0644 below

prog=${0##*/}
name_re='^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'

usage() {
	cat <<USAGE
Usage: $prog --dir DIR [--name BROKER_NAME] [--san NAME]...

Makes the certificate authority that signs every gradebroker certificate, and
the broker's TLS server certificate signed by it:

  DIR/ca.key      CA private key, EC P-256, PKCS#8 PEM, mode 0600
  DIR/ca.crt      CA certificate, 10 years, CN=BROKER_NAME CA,
                  basicConstraints CA:true (critical), keyUsage keyCertSign,cRLSign
  DIR/broker.key  broker private key, EC P-256, PKCS#8 PEM, mode 0600
  DIR/broker.crt  broker certificate, 825 days, CN=BROKER_NAME, OU=broker,
                  extendedKeyUsage serverAuth, subjectAltName DNS:localhost,
                  IP:127.0.0.1, IP:::1 and every --san

Options:
  --dir DIR          where the files go; created with mode 0700 if missing
  --name NAME        the broker's name (default: gradebroker); 1-63 characters
                     from A-Z a-z 0-9 . _ - starting with a letter or digit
  --san NAME         an extra subject alternative name for the broker
                     certificate; an IPv4/IPv6 address goes in as IP, anything
                     else as DNS; may be repeated
  -h, --help         show this help and exit

Existing keys and certificates are never overwritten: re-running keeps them and
says so on stderr. To reissue the broker certificate (for example with new
--san values) remove DIR/broker.crt and run again; the key is reused unless you
remove DIR/broker.key too. stdout carries only "key: value" lines.
USAGE
}

# say, die, usage_error, start_tmp, ossl, newfile, place, new_key: gb-lib.sh,
# found next to this script (symlinks followed), so it runs from anywhere.
here=$(dirname -- "$(readlink -f -- "${BASH_SOURCE[0]}" 2>/dev/null || printf '%s\n' "${BASH_SOURCE[0]}")")
[[ -r $here/gb-lib.sh ]] || { printf '%s: error: cannot read %s; the gb-*.sh scripts need it next to them\n' "$prog" "$here/gb-lib.sh" >&2; exit 1; }
# shellcheck source=SCRIPTDIR/gb-lib.sh
. "$here/gb-lib.sh"

dir= name=gradebroker
sans=()
while (($#)); do
	opt=$1 val= has_val=0
	case $opt in
	--*=*) val=${opt#*=} opt=${opt%%=*} has_val=1 ;;
	esac
	case $opt in
	-h | --help) usage; exit 0 ;;
	--dir | --name | --san)
		if ((!has_val)); then
			# A following option is almost certainly a forgotten value, not a value.
			[[ $# -ge 2 && $2 != --* ]] || usage_error "$opt needs a value"
			val=$2
			shift
		fi
		[[ -n $val ]] || usage_error "$opt needs a non-empty value"
		case $opt in
		--dir) dir=$val ;;
		--name) name=$val ;;
		--san) sans+=("$val") ;;
		esac
		;;
	-*) usage_error "unknown option: $opt" ;;
	*) usage_error "unexpected argument: $opt" ;;
	esac
	shift
done
[[ -n $dir ]] || usage_error "--dir is required"
[[ $name =~ $name_re ]] || usage_error "bad --name '$name': use 1-63 characters from A-Z a-z 0-9 . _ - starting with a letter or digit"

is_ipv4() {
	local IFS=. o
	[[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || return 1
	for o in $1; do ((10#$o <= 255)) || return 1; done
}
is_ipv6() { [[ $1 == *:* && $1 =~ ^[0-9A-Fa-f:.]+$ ]]; }
dns_re='^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$'

# The defaults make the broker reachable as localhost on both address families;
# duplicates from --san are dropped so the certificate lists each name once.
san_dns=(localhost)
san_ip=(127.0.0.1 ::1)
contains() {
	local want=$1 x
	shift
	for x in "$@"; do [[ $x == "$want" ]] && return 0; done
	return 1
}
for s in ${sans[@]+"${sans[@]}"}; do
	if is_ipv4 "$s" || is_ipv6 "$s"; then
		contains "$s" "${san_ip[@]}" || san_ip+=("$s")
	elif [[ ${#s} -le 253 && $s =~ $dns_re && ! $s =~ ^[0-9.]+$ ]]; then
		# (An all-digit name is a mistyped IPv4 address, not a host name.)
		s=${s,,}
		contains "$s" "${san_dns[@]}" || san_dns+=("$s")
	else
		usage_error "bad --san '$s': not an IP address or a DNS name"
	fi
done

command -v openssl >/dev/null 2>&1 || die "openssl not found in PATH; install openssl 3"
mkdir -p -- "$dir" || die "cannot create directory $dir"
[[ -d $dir && -w $dir ]] || die "$dir is not a writable directory"

start_tmp

serial() {
	local s
	s=$(openssl rand -hex 16)
	printf '0x%s\n' "$s"
}

ca_key=$dir/ca.key ca_crt=$dir/ca.crt
broker_key=$dir/broker.key broker_crt=$dir/broker.crt

{
	cat <<CNF
[ req ]
distinguished_name = req_dn
string_mask = utf8only
utf8 = yes
[ req_dn ]
[ v3_ca ]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[ broker_ext ]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = @broker_alt
[ broker_alt ]
CNF
	i=0
	for s in "${san_dns[@]}"; do i=$((i + 1)) && echo "DNS.$i = $s"; done
	i=0
	for s in "${san_ip[@]}"; do i=$((i + 1)) && echo "IP.$i = $s"; done
} >"$tmp/openssl.cnf"

# The CA.
if [[ -e $ca_crt && ! -e $ca_key ]]; then
	die "$ca_crt exists but $ca_key is missing; cannot sign with it (restore the key, or remove $ca_crt to start a new CA)"
fi
if [[ -e $ca_key ]]; then
	say "kept existing $ca_key"
else
	new_ec_key "$ca_key"
fi
if [[ -e $ca_crt ]]; then
	say "kept existing $ca_crt"
else
	newfile "$ca_crt"
	ossl req -new -x509 -config "$tmp/openssl.cnf" -extensions v3_ca \
		-key "$ca_key" -subj "/CN=$name CA" -days 3650 -sha256 \
		-set_serial "$(serial)" -out "$part"
	chmod 644 -- "$part"
	place "$part" "$ca_crt"
	say "wrote $ca_crt"
fi

# The broker's server certificate.
if [[ -e $broker_crt && ! -e $broker_key ]]; then
	die "$broker_crt exists but $broker_key is missing (remove $broker_crt to issue a new certificate and key)"
fi
if [[ -e $broker_key ]]; then
	say "kept existing $broker_key"
else
	new_ec_key "$broker_key"
fi
if [[ -e $broker_crt ]]; then
	say "kept existing $broker_crt"
	if ((${#sans[@]})); then
		say "note: --san does not change a kept certificate; remove $broker_crt and re-run to reissue it"
	fi
else
	ossl req -new -config "$tmp/openssl.cnf" -key "$broker_key" \
		-subj "/OU=broker/CN=$name" -out "$tmp/broker.csr"
	newfile "$broker_crt"
	ossl x509 -req -in "$tmp/broker.csr" -CA "$ca_crt" -CAkey "$ca_key" \
		-set_serial "$(serial)" -days 825 -sha256 \
		-extfile "$tmp/openssl.cnf" -extensions broker_ext -out "$part"
	chmod 644 -- "$part"
	place "$part" "$broker_crt"
	say "wrote $broker_crt"
fi

fingerprint() {
	local fp
	fp=$(openssl x509 -in "$1" -noout -fingerprint -sha256)
	fp=${fp#*=}
	fp=${fp//:/}
	printf '%s\n' "${fp,,}"
}
ossl x509 -in "$broker_crt" -noout -ext subjectAltName -out "$tmp/san.txt"
san_line=$(sed -n '2,$p' "$tmp/san.txt" | tr -d '\n' | sed 's/^ *//')

echo "ca_cert: $ca_crt"
echo "ca_fingerprint: $(fingerprint "$ca_crt")"
echo "broker_cert: $broker_crt"
echo "broker_key: $broker_key"
echo "broker_fingerprint: $(fingerprint "$broker_crt")"
echo "broker_sans: $san_line"
