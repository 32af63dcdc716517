variable "name" {
  description = "Name of the Veza installation; used in resource names."
  type        = string
}

variable "oidc_provider_arn" {
  description = "ARN of the cluster's IAM OIDC provider."
  type        = string
}

variable "oidc_issuer_url" {
  description = "OIDC issuer URL of the cluster."
  type        = string
}

variable "namespace" {
  description = "Namespace of the VezaPlatform."
  type        = string
}

variable "service_accounts" {
  description = "ServiceAccounts allowed to assume the role (the operator creates <platform>-api and <platform>-worker)."
  type        = list(string)
}

variable "bucket_arn" {
  description = "ARN of the platform's bucket."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the bucket."
  type        = string
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
