#!/usr/bin/env bash
# A throw-away PKI for the DICOM TLS tests and the TLS benchmark, made with the openssl CLI into
# DIR (never used outside tests): a CA, the worker's server certificate (localhost, 127.0.0.1),
# client certificates, a second "rogue" CA and its client, an expired client, a server
# certificate for the destination PACS, and a server certificate that expires in 10 days.
# RSA 2048: every DICOM TLS peer (DCMTK's BCP 195 profile, Orthanc) takes ECDHE-RSA-AES-GCM.
set -euo pipefail
dir=${1:?usage: make-pki.sh DIR}
mkdir -p "$dir"
cd "$dir"

ca() { # NAME SUBJECT
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.crt" -days 3650 \
    -subj "/CN=$2" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
}

csr() { # NAME CN SAN
  openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2/O=cxr-worker tests" \
    -addext "subjectAltName=$3" -addext "basicConstraints=CA:FALSE" \
    -addext "keyUsage=critical,digitalSignature,keyEncipherment" \
    -addext "extendedKeyUsage=serverAuth,clientAuth" 2>/dev/null
}

leaf() { # NAME CN SAN CA DAYS
  csr "$1" "$2" "$3"
  openssl x509 -req -in "$1.csr" -CA "$4.crt" -CAkey "$4.key" -CAcreateserial -out "$1.crt" \
    -days "$5" -copy_extensions copy 2>/dev/null
}

ca ca "cxr-worker test CA"
ca rogue-ca "rogue test CA"
leaf server "cxr-worker.example.org" "DNS:cxr-worker.example.org,DNS:localhost,IP:127.0.0.1" ca 825
leaf server2 "cxr-worker.example.org" "DNS:cxr-worker.example.org,DNS:localhost,IP:127.0.0.1" ca 825
leaf soon "cxr-worker.example.org" "DNS:localhost,IP:127.0.0.1" ca 10
leaf modality "modality.example.org" "DNS:modality.example.org" ca 825
leaf other "other.example.org" "DNS:other.example.org" ca 825
leaf rogue "modality.example.org" "DNS:modality.example.org" rogue-ca 825
leaf pacs "pacs.example.org" "DNS:pacs.example.org,IP:127.0.0.1" ca 825

# expired: valid 2020-2021, signed by the right CA (openssl ca can set the dates)
csr expired "modality.example.org" "DNS:modality.example.org"
mkdir -p ca-db/new
: > ca-db/index.txt
echo 1000 > ca-db/serial
cat > ca-db/ca.cnf <<CNF
[ca]
default_ca = test
[test]
database = ca-db/index.txt
new_certs_dir = ca-db/new
serial = ca-db/serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
organizationName = optional
CNF
openssl ca -batch -config ca-db/ca.cnf -cert ca.crt -keyfile ca.key -in expired.csr \
  -out expired.crt -startdate 20200101000000Z -enddate 20210101000000Z -notext 2>/dev/null
rm -f ./*.csr
