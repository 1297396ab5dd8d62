# ngx_mail_api: nginx with the module, and deliveryd, on Debian bookworm.
# Mount /etc/ngx_mail_api with nginx.conf, keys, keyring and deliveryd.conf
# (examples in conf/); Redis, MongoDB and the SMTP relay run elsewhere.
FROM debian:bookworm
WORKDIR /src
COPY . .
RUN ./build.sh deps && ./build.sh build \
 && install -m 0644 build/ngx_mail_api_module/ngx_mail_api_module.so /usr/lib/nginx/modules/ \
 && install -m 0755 build/deliveryd/deliveryd build/tools/mailapi-token/mailapi-token /usr/local/bin/ \
 && install -d /etc/ngx_mail_api && install -m 0644 conf/mail_api_tls.conf /etc/ngx_mail_api/ \
 && useradd --system --no-create-home deliveryd
EXPOSE 443
CMD ["/src/tools/docker-entrypoint.sh"]
