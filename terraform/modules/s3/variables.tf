variable "bucket" {
  description = "Name of the bucket (globally unique)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key for server-side encryption."
  type        = string
}

variable "access_log_bucket" {
  description = "Existing bucket receiving the server access logs."
  type        = string
}

variable "hls_segment_days" {
  description = "Days after which HLS segments (channels/ prefix) are deleted."
  type        = number
  default     = 1
}

variable "noncurrent_version_days" {
  description = "Days after which overwritten or deleted object versions are removed."
  type        = number
  default     = 30
}

variable "recordings_archive_days" {
  description = "Days after which recordings (recordings/ prefix) move to Glacier Instant Retrieval."
  type        = number
  default     = 90
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}
