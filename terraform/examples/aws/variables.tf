variable "name" {
  description = "Name of this installation; prefixes every AWS resource (veza-<name>)."
  type        = string
  default     = "prod"
}

variable "region" {
  description = "AWS region."
  type        = string
  default     = "eu-west-1"
}

variable "tags" {
  description = "Tags for every AWS resource."
  type        = map(string)
  default     = { "app.kubernetes.io/part-of" = "veza" }
}

variable "vpc_cidr" {
  description = "CIDR block of the VPC."
  type        = string
  default     = "10.40.0.0/16"
}

variable "az_count" {
  description = "Availability zones to use (2 or 3)."
  type        = number
  default     = 3
}

variable "kubernetes_version" {
  description = "EKS Kubernetes version."
  type        = string
  default     = "1.33"
}

variable "api_public_access_cidrs" {
  description = "CIDRs that may reach the cluster's public API endpoint (for Terraform and kubectl); empty: private only."
  type        = list(string)
  default     = []
}

variable "bucket_name" {
  description = "Name of the S3 bucket for tracks, HLS segments and recordings (globally unique)."
  type        = string
}

variable "access_log_bucket" {
  description = "Existing bucket that receives the S3 server access logs."
  type        = string
}

variable "namespace" {
  description = "Namespace of the Veza operator and the platform."
  type        = string
  default     = "veza"
}

variable "platform_name" {
  description = "Name of the VezaPlatform."
  type        = string
  default     = "main"
}

variable "host" {
  description = "Public host name of the platform."
  type        = string
}

variable "ingress_class" {
  description = "IngressClass of the platform's Ingresses (for example alb or nginx)."
  type        = string
  default     = "alb"
}

variable "veza_version" {
  description = "Tag of the Veza image for the operator and the workers."
  type        = string
  default     = "0.1.0"
}

variable "nats_chart_version" {
  description = "Version of the official NATS Helm chart."
  type        = string
  default     = "1.3.7"
}
