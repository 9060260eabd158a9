FROM alpine
RUN --mount=type=secret,id=pypi_token,required,uid=1000 <<EOF
RUN --mount=type=secret,id=pypi_token,mode=0777 this is the script, not an instruction
EOF
RUN <<-'SCRIPT' cat <<OTHER
	RUN --mount=type=secret,id=unlisted,required=true
	SCRIPT
RUN --mount=type=secret,id=unlisted2,required=true
OTHER
COPY <<CONF /etc/conf
RUN --mount=type=secret,id=unlisted3,required=true
CONF
RUN --mount=type=secret,id=pypi_token,uid=1000 true
