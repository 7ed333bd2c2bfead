# Sourced by tests/mkcerts_*.sh: an `openssl ca` set-up in the current directory that
# signs with the test CA in $certs (an absolute path), its serials starting at $serial.
: > index.txt
echo "$serial" > serial
echo "$serial" > crlnumber
cat > ca.cnf <<CNF
[ca]
default_ca = fl
[fl]
dir = .
database = index.txt
serial = serial
crlnumber = crlnumber
new_certs_dir = .
certificate = $certs/ca.crt
private_key = $certs/ca.key
default_md = sha256
default_crl_days = 30
policy = any
unique_subject = no
[any]
commonName = supplied
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
CNF
